#include "djinn/vmu/vmu_region.h"

#include <fmt/format.h>

#include <cstring>

namespace djinn {

std::string format_bytes(size_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  return unit == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", value, units[unit]);
}

Result<std::unique_ptr<VmuRegion>> VmuRegion::create(Backend& backend, size_t capacity) {
  capacity = capacity / kRegionAlignment * kRegionAlignment;
  if (capacity == 0) return invalid_argument("the VMU needs a capacity of at least one page");
  void* base = backend.allocate(capacity, kRegionAlignment);
  if (base == nullptr)
    return out_of_memory(fmt::format("VMU: the {} backend could not allocate the {} region", device_name(backend.device()),
                                     format_bytes(capacity)));
  return std::unique_ptr<VmuRegion>(new VmuRegion(backend, static_cast<std::byte*>(base), capacity));
}

VmuRegion::VmuRegion(Backend& backend, std::byte* base, size_t capacity)
    : backend_(backend), base_(base), allocator_(capacity, kRegionAlignment) {}

VmuRegion::~VmuRegion() { backend_.deallocate(base_); }

Result<std::byte*> VmuRegion::take(size_t bytes, std::string_view segment, std::string_view who, bool prefault) {
  std::unique_lock lock(mutex_);
  const std::optional<size_t> offset = allocator_.allocate(bytes);
  if (!offset)
    return out_of_memory(fmt::format("{} segment: {} asked for {}; the VMU has {} free of {} (largest free extent {})",
                                     segment, who, format_bytes(bytes), format_bytes(allocator_.free_bytes()),
                                     format_bytes(allocator_.capacity()), format_bytes(allocator_.largest_free_extent())));
  const size_t size = allocator_.extent_size(*offset);
  lock.unlock();
  if (prefault && backend_.device() == DeviceKind::kCpu) std::memset(base_ + *offset, 0, size);
  return base_ + *offset;
}

void VmuRegion::give_back(std::byte* extent) {
  std::lock_guard lock(mutex_);
  DJINN_CHECK(extent >= base_ && extent < base_ + allocator_.capacity(), "give_back of a pointer outside the region");
  allocator_.free(static_cast<size_t>(extent - base_));
}

size_t VmuRegion::free_bytes() const {
  std::lock_guard lock(mutex_);
  return allocator_.free_bytes();
}

size_t VmuRegion::largest_free_extent() const {
  std::lock_guard lock(mutex_);
  return allocator_.largest_free_extent();
}

size_t VmuRegion::extents_that_fit(size_t bytes) const {
  std::lock_guard lock(mutex_);
  return allocator_.extents_that_fit(bytes);
}

Status VmuRegion::check_invariants() const {
  std::lock_guard lock(mutex_);
  return allocator_.check_invariants();
}

}  // namespace djinn
