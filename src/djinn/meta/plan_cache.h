// PlanCache: (structural hash, shape bucket) -> Plan, LRU-bounded, so a decode step
// normally costs a lookup, not a meta-simulation.
//
// Stats (exact counts since creation or reset_stats()):
//   hits           lookups answered from the cache
//   misses         lookups that ran the meta-simulator (every lookup while disabled)
//   evictions      plans dropped because the cache was full
//   entries        plans held now
//   build_us_total sum of meta-simulation times of the misses, microseconds
//   lookup_ns      mean time of a lookup that hit, nanoseconds
// set_enabled(false) makes every lookup build a fresh plan and keep nothing; clear()
// drops every plan (the counters stay).
// Threads: thread-safe (one mutex); plans are shared_ptr<const Plan>, so an evicted
// plan stays valid for whoever still runs it.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "djinn/meta/meta_simulator.h"
#include "djinn/meta/plan.h"

namespace djinn {

struct PlanCacheStats {
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;
  uint64_t entries = 0;
  double build_us_total = 0;
  double lookup_ns = 0;
  double hit_rate() const { return hits + misses == 0 ? 0.0 : static_cast<double>(hits) / static_cast<double>(hits + misses); }
};
nlohmann::json to_json(const PlanCacheStats& stats);

class PlanCache {
 public:
  explicit PlanCache(size_t max_entries = 64);

  // The plan for this step of `graph`: cached, or simulated now (and cached).
  Result<std::shared_ptr<const Plan>> get(const Graph& graph, const SymbolBindings& symbols);

  void set_enabled(bool enabled);
  bool enabled() const;
  void clear();
  void reset_stats();
  PlanCacheStats stats() const;

 private:
  struct KeyHash {
    size_t operator()(const PlanKey& k) const {
      return static_cast<size_t>(k.graph_hash ^ (static_cast<uint64_t>(k.seq_bucket) * 0x9e3779b97f4a7c15ull) ^
                                 (static_cast<uint64_t>(k.past_bucket) << 32));
    }
  };
  using LruList = std::list<std::pair<PlanKey, std::shared_ptr<const Plan>>>;

  mutable std::mutex mutex_;
  size_t max_entries_;
  bool enabled_ = true;
  LruList lru_;  // most recently used first
  std::unordered_map<PlanKey, LruList::iterator, KeyHash> index_;
  PlanCacheStats stats_;
  double hit_lookup_ns_total_ = 0;
};

}  // namespace djinn
