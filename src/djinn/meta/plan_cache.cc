#include "djinn/meta/plan_cache.h"

#include <chrono>

namespace djinn {

nlohmann::json to_json(const PlanCacheStats& s) {
  return {{"hits", s.hits},           {"misses", s.misses},
          {"evictions", s.evictions}, {"entries", s.entries},
          {"build_us_total", s.build_us_total}, {"lookup_ns", s.lookup_ns},
          {"hit_rate", s.hit_rate()}};
}

PlanCache::PlanCache(size_t max_entries) : max_entries_(std::max<size_t>(max_entries, 1)) {}

Result<std::shared_ptr<const Plan>> PlanCache::get(const Graph& graph, const SymbolBindings& symbols) {
  const auto start = std::chrono::steady_clock::now();
  const PlanKey key = plan_key(graph, symbols);
  {
    std::lock_guard lock(mutex_);
    if (enabled_) {
      auto it = index_.find(key);
      if (it != index_.end()) {
        lru_.splice(lru_.begin(), lru_, it->second);
        ++stats_.hits;
        hit_lookup_ns_total_ += std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
        stats_.lookup_ns = hit_lookup_ns_total_ / static_cast<double>(stats_.hits);
        return it->second->second;
      }
    }
  }
  // Miss: simulate outside the lock so other lookups proceed.
  DJINN_ASSIGN_OR_RETURN(Plan built, simulate(graph, symbols));
  auto plan = std::make_shared<const Plan>(std::move(built));
  std::lock_guard lock(mutex_);
  ++stats_.misses;
  stats_.build_us_total += plan->build_us;
  if (!enabled_) return plan;
  auto existing = index_.find(key);
  if (existing != index_.end()) {  // another thread built it meanwhile
    lru_.splice(lru_.begin(), lru_, existing->second);
    return existing->second->second;
  }
  lru_.emplace_front(key, plan);
  index_.emplace(key, lru_.begin());
  if (lru_.size() > max_entries_) {
    index_.erase(lru_.back().first);
    lru_.pop_back();
    ++stats_.evictions;
  }
  stats_.entries = lru_.size();
  return plan;
}

void PlanCache::set_enabled(bool enabled) {
  std::lock_guard lock(mutex_);
  enabled_ = enabled;
  if (!enabled) {
    lru_.clear();
    index_.clear();
    stats_.entries = 0;
  }
}

bool PlanCache::enabled() const {
  std::lock_guard lock(mutex_);
  return enabled_;
}

void PlanCache::clear() {
  std::lock_guard lock(mutex_);
  lru_.clear();
  index_.clear();
  stats_.entries = 0;
}

void PlanCache::reset_stats() {
  std::lock_guard lock(mutex_);
  const uint64_t entries = stats_.entries;
  stats_ = {};
  stats_.entries = entries;
  hit_lookup_ns_total_ = 0;
}

PlanCacheStats PlanCache::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

}  // namespace djinn
