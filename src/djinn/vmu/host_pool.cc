#include "djinn/vmu/host_pool.h"

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>

#include "djinn/vmu/vmu_region.h"

namespace djinn {

Result<std::unique_ptr<HostPool>> HostPool::create(size_t bytes) {
  bytes = bytes / kSliceAlignment * kSliceAlignment;
  if (bytes > (size_t{1} << 50))
    return out_of_memory(fmt::format("HostPool: {} is more than any machine has", format_bytes(bytes)));
  std::byte* base = nullptr;
  if (bytes > 0) {
    base = static_cast<std::byte*>(std::aligned_alloc(4096, (bytes + 4095) / 4096 * 4096));
    if (base == nullptr) return out_of_memory(fmt::format("HostPool: cannot reserve {}", format_bytes(bytes)));
    std::memset(base, 0, bytes);  // touch every page now, not during a swap
  }
  std::unique_ptr<HostPool> pool(new HostPool(base, bytes));
  pool->stats_.capacity = bytes;
  return pool;
}

HostPool::~HostPool() { std::free(base_); }

Result<std::byte*> HostPool::allocate(size_t bytes, std::string_view who) {
  std::lock_guard lock(mutex_);
  const std::optional<size_t> offset = allocator_.allocate(bytes);
  if (!offset)
    return out_of_memory(fmt::format("HostPool: {} asked for {}; {} free of {} (largest free slice {})", who,
                                     format_bytes(bytes), format_bytes(allocator_.free_bytes()),
                                     format_bytes(allocator_.capacity()), format_bytes(allocator_.largest_free_extent())));
  stats_.used += allocator_.extent_size(*offset);
  stats_.peak = std::max(stats_.peak, stats_.used);
  ++stats_.allocations;
  return base_ + *offset;
}

void HostPool::free(std::byte* slice) {
  std::lock_guard lock(mutex_);
  DJINN_CHECK(slice >= base_ && slice < base_ + allocator_.capacity(), "HostPool::free of a foreign pointer");
  const auto offset = static_cast<size_t>(slice - base_);
  stats_.used -= allocator_.extent_size(offset);
  allocator_.free(offset);
}

SegmentStats HostPool::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

Status HostPool::check_invariants() const {
  std::lock_guard lock(mutex_);
  DJINN_RETURN_IF_ERROR(allocator_.check_invariants());
  if (stats_.used != allocator_.capacity() - allocator_.free_bytes()) return internal_error("HostPool: used is stale");
  return {};
}

}  // namespace djinn
