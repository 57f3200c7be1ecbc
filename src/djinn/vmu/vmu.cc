#include "djinn/vmu/vmu.h"

#include <fmt/format.h>

namespace djinn {

Result<std::unique_ptr<Vmu>> Vmu::create(Backend& backend, const VmuOptions& options) {
  size_t capacity = options.capacity_bytes;
  const size_t free_memory = backend.free_memory_bytes();
  if (capacity == 0) {
    const size_t reserve = options.reserve_bytes != 0 ? options.reserve_bytes : std::max<size_t>(free_memory / 10, 256u << 20);
    if (free_memory <= reserve)
      return out_of_memory(fmt::format("VMU: {} free on {} is less than the reserve {}", format_bytes(free_memory),
                                       device_name(backend.device()), format_bytes(reserve)));
    capacity = free_memory - reserve;
  } else if (free_memory != 0 && capacity > free_memory) {
    return out_of_memory(fmt::format("VMU: a cap of {} is more than the {} free on {}", format_bytes(capacity),
                                     format_bytes(free_memory), device_name(backend.device())));
  }
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<VmuRegion> region, VmuRegion::create(backend, capacity));
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<HostPool> pool, HostPool::create(options.host_pool_bytes, &backend, options.host_pool_growth));
  return std::unique_ptr<Vmu>(new Vmu(std::move(region), std::move(pool), options.arena_bytes));
}

Vmu::Vmu(std::unique_ptr<VmuRegion> region, std::unique_ptr<HostPool> host_pool, size_t arena_bytes)
    : region_(std::move(region)),
      host_pool_(std::move(host_pool)),
      text_(*region_),
      data_(*region_, arena_bytes),
      stack_(*region_) {}

nlohmann::json Vmu::stats_json() const {
  return {{"capacity", region_->capacity()},
          {"free", region_->free_bytes()},
          {"text", to_json(text_.stats())},
          {"data", to_json(data_.stats())},
          {"stack", to_json(stack_.stats())},
          {"host_pool", host_pool_->stats_json()}};
}

Status Vmu::check_invariants() const {
  DJINN_RETURN_IF_ERROR(region_->check_invariants());
  DJINN_RETURN_IF_ERROR(text_.check_invariants());
  DJINN_RETURN_IF_ERROR(data_.check_invariants());
  DJINN_RETURN_IF_ERROR(stack_.check_invariants());
  DJINN_RETURN_IF_ERROR(host_pool_->check_invariants());
  const size_t held = text_.stats().capacity + data_.stats().segment.capacity + stack_.stats().capacity;
  // Extents are page-rounded, so the region may hold a little more than the segments report.
  if (held > region_->capacity() - region_->free_bytes())
    return internal_error(fmt::format("VMU: segments hold {} but only {} of the region is taken", held,
                                      region_->capacity() - region_->free_bytes()));
  return {};
}

}  // namespace djinn
