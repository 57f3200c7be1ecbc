// HostPool: host memory for swapped-out session state, reserved once at start and
// sliced (pinning is slow, so it never happens per swap). On the CPU backend it is
// ordinary host memory whose pages are touched at creation, so the reservation is
// real; the CUDA backend pins it (cudaHostRegister) in a later part.
//
// Slices come from an ExtentAllocator over the pool (first fit, coalescing).
// Out of pool memory is a Status; the caller keeps the state where it was.
// Threads: thread-safe.
#pragma once

#include <memory>
#include <mutex>
#include <string_view>

#include "djinn/core/status.h"
#include "djinn/vmu/extent_allocator.h"
#include "djinn/vmu/segment_stats.h"

namespace djinn {

class HostPool {
 public:
  static Result<std::unique_ptr<HostPool>> create(size_t bytes);
  ~HostPool();
  HostPool(const HostPool&) = delete;
  HostPool& operator=(const HostPool&) = delete;

  Result<std::byte*> allocate(size_t bytes, std::string_view who);
  void free(std::byte* slice);
  SegmentStats stats() const;
  Status check_invariants() const;

 private:
  static constexpr size_t kSliceAlignment = 256;
  HostPool(std::byte* base, size_t bytes) : base_(base), allocator_(bytes, kSliceAlignment) {}

  std::byte* base_;
  mutable std::mutex mutex_;
  ExtentAllocator allocator_;
  SegmentStats stats_;
};

}  // namespace djinn
