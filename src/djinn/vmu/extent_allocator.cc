#include "djinn/vmu/extent_allocator.h"

#include <fmt/format.h>

namespace djinn {

namespace {
size_t checked_alignment(size_t alignment) {
  DJINN_CHECK(alignment > 0 && (alignment & (alignment - 1)) == 0, "alignment {} is not a power of two", alignment);
  return alignment;
}
}  // namespace

ExtentAllocator::ExtentAllocator(size_t capacity, size_t alignment)
    : capacity_(capacity / checked_alignment(alignment) * alignment), alignment_(alignment), free_bytes_(capacity_) {
  if (capacity_ > 0) free_.emplace(0, capacity_);
}

std::optional<size_t> ExtentAllocator::allocate(size_t bytes) {
  if (bytes > capacity_) return std::nullopt;  // also keeps round_up from wrapping
  const size_t size = round_up(bytes == 0 ? 1 : bytes);
  for (auto it = free_.begin(); it != free_.end(); ++it) {
    if (it->second < size) continue;
    const size_t offset = it->first, remaining = it->second - size;
    free_.erase(it);
    if (remaining > 0) free_.emplace(offset + size, remaining);
    allocated_.emplace(offset, size);
    free_bytes_ -= size;
    return offset;
  }
  return std::nullopt;
}

void ExtentAllocator::free(size_t offset) {
  auto it = allocated_.find(offset);
  DJINN_CHECK(it != allocated_.end(), "free of offset {} that is not a live extent", offset);
  size_t start = offset, size = it->second;
  allocated_.erase(it);
  free_bytes_ += size;
  auto next = free_.lower_bound(start);
  if (next != free_.end() && start + size == next->first) {  // merge with the range after
    size += next->second;
    next = free_.erase(next);
  }
  if (next != free_.begin()) {  // merge with the range before
    auto prev = std::prev(next);
    if (prev->first + prev->second == start) {
      prev->second += size;
      return;
    }
  }
  free_.emplace(start, size);
}

size_t ExtentAllocator::largest_free_extent() const {
  size_t largest = 0;
  for (const auto& [offset, size] : free_) largest = std::max(largest, size);
  return largest;
}

size_t ExtentAllocator::extents_that_fit(size_t bytes) const {
  if (bytes > capacity_) return 0;
  const size_t size = round_up(bytes == 0 ? 1 : bytes);
  size_t count = 0;
  for (const auto& [offset, free_size] : free_) count += free_size / size;
  return count;
}

size_t ExtentAllocator::extent_size(size_t offset) const {
  auto it = allocated_.find(offset);
  DJINN_CHECK(it != allocated_.end(), "no live extent at offset {}", offset);
  return it->second;
}

Status ExtentAllocator::check_invariants() const {
  size_t free_total = 0, end_of_previous = 0;
  bool first = true;
  for (const auto& [offset, size] : free_) {
    if (size == 0 || offset % alignment_ || size % alignment_)
      return internal_error(fmt::format("free range [{}, +{}) is empty or misaligned", offset, size));
    if (!first && offset <= end_of_previous)
      return internal_error(fmt::format("free range at {} overlaps or touches the previous one", offset));
    if (offset + size > capacity_) return internal_error(fmt::format("free range at {} runs past the end", offset));
    end_of_previous = offset + size;
    first = false;
    free_total += size;
  }
  size_t allocated_total = 0;
  for (const auto& [offset, size] : allocated_) {
    allocated_total += size;
    auto after = free_.upper_bound(offset);
    if (after != free_.end() && after->first < offset + size)
      return internal_error(fmt::format("extent at {} overlaps a free range", offset));
    if (after != free_.begin()) {
      auto before = std::prev(after);
      if (before->first + before->second > offset)
        return internal_error(fmt::format("extent at {} overlaps a free range", offset));
    }
  }
  if (free_total != free_bytes_) return internal_error("free byte count is stale");
  if (free_total + allocated_total != capacity_)
    return internal_error(fmt::format("free {} + allocated {} != capacity {}", free_total, allocated_total, capacity_));
  return {};
}

void ExtentAllocator::grow(size_t new_capacity, size_t guard_bytes) {
  new_capacity = new_capacity / alignment_ * alignment_;
  guard_bytes = round_up(guard_bytes);
  DJINN_CHECK(new_capacity >= capacity_ + guard_bytes, "ExtentAllocator::grow from {} to {} (guard {}) would shrink it",
              capacity_, new_capacity, guard_bytes);
  const size_t free_end = new_capacity - guard_bytes;
  if (free_end > capacity_) {
    size_t start = capacity_;
    if (!free_.empty()) {
      auto last = std::prev(free_.end());
      if (last->first + last->second == capacity_) {  // coalesce with the free tail
        start = last->first;
        free_.erase(last);
      }
    }
    free_.emplace(start, free_end - start);
    free_bytes_ += free_end - capacity_;
  }
  if (guard_bytes > 0) allocated_.emplace(free_end, guard_bytes);
  capacity_ = new_capacity;
}

}  // namespace djinn
