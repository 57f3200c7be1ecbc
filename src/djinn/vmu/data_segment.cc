#include "djinn/vmu/data_segment.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>

namespace djinn {

SessionArena::~SessionArena() { segment_.release(*this); }

Result<std::byte*> SessionArena::allocate(size_t bytes, size_t alignment, std::string_view what) {
  DJINN_CHECK(alignment > 0 && (alignment & (alignment - 1)) == 0, "alignment {} is not a power of two", alignment);
  const size_t start = (used_ + alignment - 1) / alignment * alignment;
  if (start > capacity_ || bytes > capacity_ - start)
    return out_of_memory(fmt::format("Data segment: {} asked for {} for {}; its arena has {} of {} free", owner_,
                                     format_bytes(bytes), what, format_bytes(capacity_ - std::min(capacity_, start)),
                                     format_bytes(capacity_)));
  const size_t grown = start + bytes - used_;
  used_ = start + bytes;
  segment_.note_allocation(grown);
  return base_ + start;
}

DataSegment::DataSegment(VmuRegion& region, size_t arena_bytes) : region_(region), arena_bytes_(arena_bytes) {}

void DataSegment::note_allocation(size_t grown_bytes) {
  std::lock_guard lock(mutex_);
  ++stats_.allocations;
  stats_.used += grown_bytes;
  stats_.peak = std::max(stats_.peak, stats_.used);
}

Result<std::unique_ptr<SessionArena>> DataSegment::open_arena(std::string owner) {
  std::byte* base = nullptr;
  size_t bytes;
  {
    std::lock_guard lock(mutex_);
    bytes = arena_bytes_;
    if (bytes == 0) return invalid_argument("Data segment: the arena size is not set");
    if (!cached_.empty()) {
      base = cached_.back();
      cached_.pop_back();
      ++reused_;
    }
  }
  if (base == nullptr) {
    Result<std::byte*> taken = region_.take(bytes, "Data", fmt::format("{} (a session arena)", owner), /*prefault=*/true);
    if (!taken.ok()) return taken.status();
    base = *taken;
    std::lock_guard lock(mutex_);
    stats_.capacity += bytes;
  }
  std::unique_ptr<SessionArena> arena(new SessionArena(*this, base, bytes, std::move(owner)));
  std::lock_guard lock(mutex_);
  live_.push_back(arena.get());
  return arena;
}

void DataSegment::release(SessionArena& arena) {
  std::lock_guard lock(mutex_);
  std::erase(live_, &arena);
  stats_.used -= std::min(stats_.used, arena.used_);
  if (arena.capacity_ == arena_bytes_) {
    cached_.push_back(arena.base_);
  } else {  // an arena of an older size: its extent goes back
    region_.give_back(arena.base_);
    stats_.capacity -= arena.capacity_;
  }
}

Status DataSegment::set_arena_bytes(size_t bytes) {
  std::lock_guard lock(mutex_);  // one critical section: no arena can open in between
  if (bytes == arena_bytes_) return {};
  if (!live_.empty())
    return invalid_argument(fmt::format("Data segment: cannot change the arena size from {} to {} while {} sessions are open",
                                        format_bytes(arena_bytes_), format_bytes(bytes), live_.size()));
  trim_locked();
  arena_bytes_ = bytes;
  return {};
}

size_t DataSegment::arena_bytes() const {
  std::lock_guard lock(mutex_);
  return arena_bytes_;
}

size_t DataSegment::trim() {
  std::lock_guard lock(mutex_);
  return trim_locked();
}

size_t DataSegment::trim_locked() {
  size_t returned = 0;
  for (std::byte* base : cached_) {
    region_.give_back(base);
    returned += arena_bytes_;
  }
  cached_.clear();
  stats_.capacity -= returned;
  return returned;
}

nlohmann::json to_json(const DataStats& s) {
  nlohmann::json out = to_json(s.segment);
  out["arena_bytes"] = s.arena_bytes;
  out["arenas_live"] = s.arenas_live;
  out["arenas_cached"] = s.arenas_cached;
  out["arenas_reused"] = s.arenas_reused;
  out["internal_fragmentation"] = s.internal_fragmentation;
  out["external_fragmentation"] = s.external_fragmentation;
  return out;
}

DataStats DataSegment::stats() const {
  std::lock_guard lock(mutex_);
  DataStats s;
  s.segment = stats_;
  s.arena_bytes = arena_bytes_;
  s.arenas_live = live_.size();
  s.arenas_cached = cached_.size();
  s.arenas_reused = reused_;
  const size_t live_bytes = live_.size() * arena_bytes_;
  s.internal_fragmentation = live_bytes == 0 ? 0.0 : 1.0 - static_cast<double>(stats_.used) / static_cast<double>(live_bytes);
  if (arena_bytes_ > 0) {
    // Of the arenas the free memory could hold if it were one range, how many cannot be
    // placed because of how it is split. Arena extents are page-rounded.
    const size_t extent = (arena_bytes_ + kRegionAlignment - 1) / kRegionAlignment * kRegionAlignment;
    const size_t ideal = region_.free_bytes() / extent + cached_.size();
    const size_t actual = region_.extents_that_fit(arena_bytes_) + cached_.size();
    s.external_fragmentation = ideal == 0 ? 0.0 : 1.0 - static_cast<double>(actual) / static_cast<double>(ideal);
  }
  return s;
}

Status DataSegment::check_invariants() const {
  std::lock_guard lock(mutex_);
  size_t used = 0;
  std::vector<std::pair<const std::byte*, size_t>> extents;
  for (const SessionArena* arena : live_) {
    if (arena->used() > arena->capacity())
      return internal_error(fmt::format("Data: arena of {} uses {} > capacity {}", arena->owner(), arena->used(), arena->capacity()));
    if (!region_.contains(arena->base(), arena->capacity()))
      return internal_error(fmt::format("Data: arena of {} lies outside the region", arena->owner()));
    used += arena->used();
    extents.emplace_back(arena->base(), arena->capacity());
  }
  for (const std::byte* base : cached_) extents.emplace_back(base, arena_bytes_);
  std::sort(extents.begin(), extents.end());
  for (size_t i = 1; i < extents.size(); ++i)
    if (extents[i - 1].first + extents[i - 1].second > extents[i].first) return internal_error("Data: two arenas overlap");
  if (used != stats_.used) return internal_error(fmt::format("Data: used {} != sum over arenas {}", stats_.used, used));
  if (stats_.used > stats_.peak) return internal_error("Data: used above peak");
  return {};
}

}  // namespace djinn
