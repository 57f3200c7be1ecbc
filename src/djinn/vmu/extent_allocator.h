// ExtentAllocator: hands out byte ranges [offset, offset + size) of a fixed-size
// address range; it never touches memory itself. The VMU carves its region into
// segment extents with it, the HostPool its pinned slab.
//
// Policy:
//  - first fit over a free list kept sorted by offset; freed ranges coalesce with
//    their neighbours, so the free list never holds two adjacent ranges;
//  - every offset and size is a multiple of `alignment` (sizes are rounded up).
// Invariants (check_invariants): free ranges sorted, disjoint, non-adjacent, inside
// the range; free + allocated == capacity.
// Threads: not thread-safe; the owner serialises calls.
#pragma once

#include <cstddef>
#include <map>
#include <optional>

#include "djinn/core/status.h"

namespace djinn {

class ExtentAllocator {
 public:
  ExtentAllocator(size_t capacity, size_t alignment);

  // Offset of a new extent of at least `bytes`, or nullopt if no free range fits.
  std::optional<size_t> allocate(size_t bytes);
  // Returns the extent at `offset` (as returned by allocate). Checks it is one.
  void free(size_t offset);
  // Extends the range to `new_capacity` (>= capacity(), aligned down); the new bytes
  // are free, except the last `guard_bytes` (aligned up), which become a live extent
  // that is never handed out: no extent allocated later spans the old and new ranges'
  // next boundary.
  void grow(size_t new_capacity, size_t guard_bytes = 0);

  size_t capacity() const { return capacity_; }
  size_t free_bytes() const { return free_bytes_; }
  size_t largest_free_extent() const;
  // How many extents of `bytes` the free ranges could hold, as they are split now.
  size_t extents_that_fit(size_t bytes) const;
  size_t extent_size(size_t offset) const;  // size of the live extent at `offset`
  size_t live_extents() const { return allocated_.size(); }
  // Rounds up to the alignment; `bytes` must be <= capacity() (callers check first).
  size_t round_up(size_t bytes) const { return (bytes + alignment_ - 1) / alignment_ * alignment_; }
  Status check_invariants() const;

 private:
  size_t capacity_;
  size_t alignment_;
  size_t free_bytes_;
  std::map<size_t, size_t> free_;       // offset -> size
  std::map<size_t, size_t> allocated_;  // offset -> size
};

}  // namespace djinn
