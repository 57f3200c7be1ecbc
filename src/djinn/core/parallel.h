// parallel_ranges: splits [0, n) into one contiguous range per hardware thread and runs
// body(begin, end) on each, the calling thread taking the first; returns when all are
// done. Below `serial_below` items everything runs on the calling thread (threads cost
// more than they save). `body` must be safe to run concurrently on disjoint ranges.
// Workers run on every CPU of the process even when the caller is pinned (--pin-cpu).
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

#include "djinn/core/cpu_affinity.h"

namespace djinn {

template <typename Body>
void parallel_ranges(int64_t n, int64_t serial_below, Body&& body) {
  if (n <= 0) return;
  const int64_t threads = n < serial_below ? 1 : std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t per_thread = (n + threads - 1) / threads;
  std::vector<std::thread> workers;
  for (int64_t t = 1; t < threads; ++t)
    workers.emplace_back([&body, begin = std::min(n, t * per_thread), end = std::min(n, (t + 1) * per_thread)] {
      unpin_current_thread();
      body(begin, end);
    });
  body(int64_t{0}, std::min(n, per_thread));
  for (std::thread& w : workers) w.join();
}

}  // namespace djinn
