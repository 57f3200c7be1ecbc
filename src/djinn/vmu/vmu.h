// Vmu: the virtual memory unit. It owns one device region and manages it by what
// tensors mean (core/lifetime.h):
//   Text     model weights, one exact extent per model, shared by its sessions
//   Data     session arenas (KV caches), fixed size, reused when sessions close
//   Stack    one step's activations, a bump pointer reset after every step
//   HostPool host memory reserved at start for swapped-out session state
// Sizing: --device-mem-gb caps the region (so a CPU run hits the limits a GPU would,
// and an H200 can stand in for an H100); without a cap, the backend's free memory
// minus a reserve. Every byte a model uses lives in one of these segments.
// Threads: thread-safe (each segment locks itself).
#pragma once

#include <memory>
#include <nlohmann/json.hpp>

#include "djinn/backend/backend.h"
#include "djinn/vmu/data_segment.h"
#include "djinn/vmu/host_pool.h"
#include "djinn/vmu/stack_segment.h"
#include "djinn/vmu/text_segment.h"
#include "djinn/vmu/vmu_region.h"

namespace djinn {

struct VmuOptions {
  size_t capacity_bytes = 0;   // 0: the backend's free memory minus reserve_bytes
  size_t reserve_bytes = 0;    // 0: 10 % of free memory, at least 256 MiB, left to everything else
  size_t arena_bytes = 0;      // 0: set per model when the first session opens
  size_t host_pool_bytes = 0;  // swap space in host memory
  // kBackground: the pool becomes ready (populated, pinned) after create() returns.
  HostPool::Growth host_pool_growth = HostPool::Growth::kNow;
};

class Vmu {
 public:
  static Result<std::unique_ptr<Vmu>> create(Backend& backend, const VmuOptions& options);

  TextSegment& text() { return text_; }
  DataSegment& data() { return data_; }
  StackSegment& stack() { return stack_; }
  HostPool& host_pool() { return *host_pool_; }
  const VmuRegion& region() const { return *region_; }
  size_t capacity() const { return region_->capacity(); }

  // {"capacity", "free", "text", "data", "stack", "host_pool"}: per segment
  // {capacity, used, peak, allocations}; data adds arenas and fragmentation.
  nlohmann::json stats_json() const;
  Status check_invariants() const;

 private:
  Vmu(std::unique_ptr<VmuRegion> region, std::unique_ptr<HostPool> host_pool, size_t arena_bytes);

  std::unique_ptr<VmuRegion> region_;
  std::unique_ptr<HostPool> host_pool_;
  TextSegment text_;
  DataSegment data_;
  StackSegment stack_;
};

}  // namespace djinn
