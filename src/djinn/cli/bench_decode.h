// `djinn bench decode`: prefill time and greedy decode throughput of one session, and
// optionally batched decode steps of several sessions at the same context.
//
// On cuda the run first measures the device's ceilings (backend/cuda/cuda_baselines.h:
// device-to-device copy bandwidth, cuBLAS GEMM throughput at 8192^3), before the model
// takes the memory, and states each result against them:
//   decode step      / (weight bytes / copy bandwidth)            target <= 1.25
//   prefill model FLOPs / time as % of the GEMM throughput         target >= 60 %
//   batched: (weight bytes + every session's KV bytes) / step time
//            as % of the copy bandwidth                            target >= 75 %
// With --swap-during, decode steps also run while another session of the same size
// is swapped out and in (a copy in flight during the step), beside steps with no swap
// in flight, measured alternately in the same run: the slowdown is the swaps' cost
// to compute (target <= 15 %).
#pragma once

#include <cstdint>
#include <vector>

#include "djinn/cli/model_options.h"
#include "djinn/core/status.h"

namespace djinn::cli {

struct DecodeBenchOptions {
  ModelOptions model;
  int64_t prompt_len = 128;
  int64_t n_tokens = 64;
  int64_t repeats = 3;
  std::vector<int64_t> batches;  // batched decode sizes (empty: none)
  bool swap_during = false;      // time decode steps while another session swaps
  bool json = false;
};

Status bench_decode(const DecodeBenchOptions& options);

}  // namespace djinn::cli
