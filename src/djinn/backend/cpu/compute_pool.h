// ComputePool: the CPU backend's worker threads, one per CPU (the caller counts as
// one). Every parallel kernel of the CPU backend runs on it — its own skinny GEMMs and
// OpenBLAS calls split into column slices — and OpenBLAS itself is set to one thread,
// so that two thread pools never spin against each other for the same cores (they did:
// OpenBLAS's idle workers yield-spin for a long while after each call, and a second
// pool's workers then share cores with them).
//
// Workers spin for a short while after each task before sleeping (the matmuls of one
// decode step come microseconds apart), then wait on a futex. Worker i stays on the
// process's i-th CPU (see compute_pool.cc).
// Threads: run() may be called from any thread; concurrent calls take turns; a task
// that calls run() has its parts run one after another on its own thread. An exception
// thrown by a part is rethrown by run() once every part has finished.
#pragma once

#include <atomic>
#include <exception>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace djinn::cpu {

class ComputePool {
 public:
  // The process-wide pool; the first call starts it and sets OpenBLAS to one thread.
  static ComputePool& instance();
  ~ComputePool();
  ComputePool(const ComputePool&) = delete;
  ComputePool& operator=(const ComputePool&) = delete;

  // One 1024 x 1024 x 1024 GEMM on every thread (~45 ms on a 2-core EPYC VM), so that
  // each thread's OpenBLAS packing buffers are touched up to their full panels before a
  // first request needs them. For servers, once at start (see `djinn serve`).
  void warm_gemm_buffers();

  // Workers plus the caller.
  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs task(0), ..., task(size() - 1) at once, task(0) on the caller; returns when all
  // are done.
  void run(const std::function<void(int)>& task);

  // Splits [0, n) into size() ranges whose ends are multiples of `grain` (but the last)
  // and runs body(begin, end) on each non-empty one in parallel. Below 2 * grain * size()
  // items everything runs on the caller.
  void for_ranges(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body);

 private:
  ComputePool();
  void work(int index);
  void gemm_on_every_thread(int dim);  // one dim x dim x dim SGEMM on each thread, of zeros

  std::mutex run_mutex_;
  const std::function<void(int)>* task_ = nullptr;
  std::mutex failure_mutex_;
  std::exception_ptr failure_;  // the first exception a worker's part threw
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stopping_{false};
  std::vector<std::thread> workers_;
};

}  // namespace djinn::cpu
