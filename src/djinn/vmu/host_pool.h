// HostPool: host memory for swapped-out session state, reserved once at start and
// sliced (pinning is slow, so it never happens per swap).
//
// Growth: the pool's address range is reserved at once (mmap, nothing touched) and
// made ready chunk by chunk: every page of a chunk is touched by all cores at once
// (page population is the slow, single-threaded part of pinning), then the chunk is
// handed to Backend::pin_host (CUDA: cudaHostRegister; CPU: nothing), then its bytes
// join the slice allocator. With Growth::kBackground a thread does this after create()
// returns (the first chunk is ready before it returns), so a server with a pool of
// 96 GiB serves at once and can swap into the part that is ready (stats: "ready_bytes", "pinned"); kNow does it before returning.
// A slice never crosses a chunk boundary (a guard extent ends every chunk), so each
// slice lies inside one pinned registration.
//
// Slices come from an ExtentAllocator over the ready part (first fit, coalescing).
// Out of pool memory (or not ready yet) is a Status; the caller keeps the state where
// it was.
// Threads: thread-safe; the growth thread is joined by the destructor.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string_view>
#include <thread>

#include "djinn/core/status.h"
#include "djinn/vmu/extent_allocator.h"
#include "djinn/vmu/segment_stats.h"

namespace djinn {

class Backend;

class HostPool {
 public:
  enum class Growth : uint8_t { kNow, kBackground };
  static constexpr size_t kDefaultChunkBytes = size_t{4} << 30;

  // `pinner` pins each chunk (may be null: plain memory). `chunk_bytes` 0: the default.
  static Result<std::unique_ptr<HostPool>> create(size_t bytes, Backend* pinner = nullptr, Growth growth = Growth::kNow,
                                                  size_t chunk_bytes = 0);
  ~HostPool();
  HostPool(const HostPool&) = delete;
  HostPool& operator=(const HostPool&) = delete;

  Result<std::byte*> allocate(size_t bytes, std::string_view who);
  void free(std::byte* slice);
  // Blocks until the whole pool is ready (or growth failed); returns growth's status.
  Status wait_ready();
  SegmentStats stats() const;  // capacity: the reserved size
  size_t ready_bytes() const { return ready_bytes_.load(std::memory_order_acquire); }
  // {"capacity", "used", "peak", "allocations", "ready_bytes", "pinned", "ready_seconds", "growth_error"}
  nlohmann::json stats_json() const;
  Status check_invariants() const;

 private:
  static constexpr size_t kSliceAlignment = 256;
  HostPool(std::byte* base, size_t bytes, size_t chunk_bytes, Backend* pinner);
  void grow_all();  // makes every chunk ready, in order
  void join_grower();  // any thread, any number of times

  std::byte* base_;
  size_t reserved_bytes_;
  size_t chunk_bytes_;
  Backend* pinner_;
  std::atomic<size_t> ready_bytes_{0};
  std::atomic<bool> stopping_{false};
  std::thread grower_;
  std::mutex join_mutex_;  // serialises joining grower_
  mutable std::mutex mutex_;
  ExtentAllocator allocator_;
  SegmentStats stats_;
  size_t pinned_chunks_ = 0;
  size_t guard_bytes_ = 0;  // held by the chunk guards
  double ready_seconds_ = 0;  // time from create() to the whole pool ready
  Status growth_status_;
  bool growth_done_ = false;
};

}  // namespace djinn
