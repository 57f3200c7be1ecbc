#include "djinn/backend/cpu/compute_pool.h"

#include <cblas.h>
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <vector>

#include "djinn/core/cpu_affinity.h"

namespace djinn::cpu {
namespace {

// How long an idle worker looks for the next task before it sleeps.
constexpr auto kSpin = std::chrono::microseconds(50);

}  // namespace

ComputePool& ComputePool::instance() {
  static ComputePool pool;
  return pool;
}

ComputePool::ComputePool() {
  openblas_set_num_threads(1);
  const int threads = std::max(1, startup_cpu_count());
  for (int t = 1; t < threads; ++t) workers_.emplace_back([this, t] { work(t); });
  // One small GEMM on every thread now: OpenBLAS sets up each calling thread's packing
  // buffers on its first GEMM (mmap and page faults, milliseconds), which would
  // otherwise land on a server's first request.
  gemm_on_every_thread(16);
}

// A thread's first GEMMs of a size touch its OpenBLAS packing buffers for the first
// time (page faults); the 16 x 16 GEMM at construction sets the buffers up but touches
// little of them. 1024 in every dimension reaches the full P x Q panels of OpenBLAS's x86
// kernels. Measured on the 2-core EPYC VM (a fresh process, gpt2, 128 tokens), the first
// forward page-faulted 388 times after the small GEMM alone and 111 times after this one;
// the second forward 51 times and none. Faults cost more than usual in a VM whose host
// takes back freed memory (this one reports free pages to its host).
void ComputePool::warm_gemm_buffers() { gemm_on_every_thread(1024); }

void ComputePool::gemm_on_every_thread(int dim) {
  run([dim](int) {
    const std::vector<float> a(static_cast<size_t>(dim) * static_cast<size_t>(dim), 0.0f);
    std::vector<float> c(a.size());
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, dim, dim, dim, 1.0f, a.data(), dim, a.data(), dim, 0.0f,
                c.data(), dim);
  });
}

ComputePool::~ComputePool() {
  stopping_.store(true);
  generation_.fetch_add(1);
  generation_.notify_all();
  for (std::thread& t : workers_) t.join();
}

namespace {
// Set while a thread runs a pool task: a task that calls run() again runs its parts
// itself, one after another (the pool is busy with the outer call).
thread_local bool t_in_pool_task = false;
}  // namespace

void ComputePool::run(const std::function<void(int)>& task) {
  if (workers_.empty() || t_in_pool_task) {
    for (int part = 0; part < size(); ++part) task(part);
    return;
  }
  std::lock_guard lock(run_mutex_);
  task_ = &task;
  failure_ = nullptr;
  pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();
  std::exception_ptr own_failure;
  t_in_pool_task = true;
  try {
    task(0);
  } catch (...) {
    own_failure = std::current_exception();
  }
  t_in_pool_task = false;
  // Every worker is done with `task` (and the caller's stack it refers to) before this
  // returns, whatever happened: spin briefly (parts usually end together), then sleep.
  const auto spin_start = std::chrono::steady_clock::now();
  for (int look = 1;; ++look) {
    const int left = pending_.load(std::memory_order_acquire);
    if (left == 0) break;
    if (look % 64 == 0 && std::chrono::steady_clock::now() - spin_start > kSpin) {
      pending_.wait(left, std::memory_order_acquire);
    } else {
      _mm_pause();
    }
  }
  task_ = nullptr;
  if (own_failure) std::rethrow_exception(own_failure);
  if (failure_) std::rethrow_exception(failure_);
}

void ComputePool::for_ranges(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  const int parts = size();
  if (parts == 1 || n < 2 * grain * parts) {
    body(0, n);
    return;
  }
  const int64_t grains = (n + grain - 1) / grain;
  const int64_t per_part = (grains + parts - 1) / parts;
  run([&](int part) {
    const int64_t begin = std::min(n, part * per_part * grain), end = std::min(n, (part + 1) * per_part * grain);
    if (begin < end) body(begin, end);
  });
}

void ComputePool::work(int index) {
  // Worker i stays on the i-th CPU from the low end, so that two workers never share a
  // core (woken from a futex, a worker was often placed on its waker's core and the
  // step ran at half speed); the highest CPU is left to the caller (by default the
  // server's pinned scheduler thread, see default_request_path_cpu).
  if (!pin_current_thread(startup_cpu(index - 1))) unpin_current_thread();
  uint64_t seen = 0;
  for (;;) {
    uint64_t now = generation_.load(std::memory_order_acquire);
    if (now == seen) {
      const auto spin_start = std::chrono::steady_clock::now();
      for (int look = 1; now == seen; ++look) {
        _mm_pause();
        now = generation_.load(std::memory_order_acquire);
        if (look % 64 == 0 && std::chrono::steady_clock::now() - spin_start > kSpin) break;
      }
    }
    if (now == seen) {
      generation_.wait(seen, std::memory_order_acquire);
      continue;
    }
    seen = now;
    if (stopping_.load()) return;
    t_in_pool_task = true;
    try {
      (*task_)(index);
    } catch (...) {
      std::lock_guard lock(failure_mutex_);
      if (!failure_) failure_ = std::current_exception();
    }
    t_in_pool_task = false;
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
  }
}

}  // namespace djinn::cpu
