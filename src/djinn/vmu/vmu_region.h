// VmuRegion: the device memory the VMU manages — one backend allocation, carved into
// segment extents (Text per model, Data arenas, the Stack) by an ExtentAllocator.
// Segments take extents from it and give them back; nobody else frees its memory.
// Threads: thread-safe (one mutex).
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "djinn/backend/backend.h"
#include "djinn/core/status.h"
#include "djinn/vmu/extent_allocator.h"

namespace djinn {

// Extents start on page boundaries.
inline constexpr size_t kRegionAlignment = size_t{4096};

class VmuRegion {
 public:
  // Allocates `capacity` bytes from `backend` (host memory on the CPU backend is
  // committed lazily, page by page, as segments touch it).
  static Result<std::unique_ptr<VmuRegion>> create(Backend& backend, size_t capacity);
  ~VmuRegion();
  VmuRegion(const VmuRegion&) = delete;
  VmuRegion& operator=(const VmuRegion&) = delete;

  // An extent of at least `bytes`, or out-of-memory naming `who` and `segment`.
  // `prefault`: on the CPU backend, touch every page now (zeroing it), so the first
  // step that uses the extent does not pay the page faults; device memory needs none.
  Result<std::byte*> take(size_t bytes, std::string_view segment, std::string_view who, bool prefault = false);
  void give_back(std::byte* extent);

  size_t capacity() const { return allocator_.capacity(); }
  size_t free_bytes() const;
  size_t largest_free_extent() const;
  // How many extents of `bytes` the free ranges could hold, as they are split now.
  size_t extents_that_fit(size_t bytes) const;
  std::byte* base() const { return base_; }
  bool contains(const void* p, size_t bytes) const {
    auto* b = static_cast<const std::byte*>(p);
    return b >= base_ && b + bytes <= base_ + allocator_.capacity();
  }
  Status check_invariants() const;

 private:
  VmuRegion(Backend& backend, std::byte* base, size_t capacity);

  Backend& backend_;
  std::byte* base_;
  mutable std::mutex mutex_;
  ExtentAllocator allocator_;
};

std::string format_bytes(size_t bytes);

}  // namespace djinn
