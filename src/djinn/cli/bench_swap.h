// `djinn bench swap`: swap throughput beside the raw copy throughput of the same memory.
#pragma once

#include <string>

#include "djinn/core/status.h"

namespace djinn::cli {

struct SwapBenchOptions {
  int max_mb = 1024;  // largest session, MiB (sizes 1, 4, 16, ... up to this)
  std::string device = "cpu";
  bool json = false;
};

Status bench_swap(const SwapBenchOptions& options);

}  // namespace djinn::cli
