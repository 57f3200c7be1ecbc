// DataSegment: per-session state (the KV cache), one fixed-size SessionArena per
// session.
//
// Policy:
//  - every arena is `arena_bytes` (from --arena-mb, GENIE_VMU_SESSION_ARENA_MB, or the
//    model's KV bytes per token x the session's max context), one region extent;
//  - inside an arena, bump allocation (a session's KV tensors, allocated once);
//  - a closed session's arena goes to a free list and is reused by the next session
//    without touching the region; trim() gives cached arenas back to the region.
// Fragmentation (stats):
//  - internal = 1 - used / (live arenas x arena_bytes): reserved but unused arena bytes;
//  - external = 1 - (arenas that fit the free ranges as they are + cached arenas) /
//    (arenas the free bytes would hold as one range + cached arenas): free memory
//    split into pieces smaller than an arena.
// Threads: thread-safe; one SessionArena is used by one thread at a time.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "djinn/vmu/segment_stats.h"
#include "djinn/vmu/vmu_region.h"

namespace djinn {

class DataSegment;

class SessionArena {
 public:
  ~SessionArena();
  SessionArena(const SessionArena&) = delete;
  SessionArena& operator=(const SessionArena&) = delete;

  // `bytes` at `alignment` (a power of two) from the bump pointer, or out-of-memory
  // naming the arena's owner and `what`.
  Result<std::byte*> allocate(size_t bytes, size_t alignment, std::string_view what);
  std::byte* base() const { return base_; }
  size_t capacity() const { return capacity_; }
  size_t used() const { return used_; }
  const std::string& owner() const { return owner_; }

 private:
  friend class DataSegment;
  SessionArena(DataSegment& segment, std::byte* base, size_t capacity, std::string owner)
      : segment_(segment), base_(base), capacity_(capacity), owner_(std::move(owner)) {}
  DataSegment& segment_;
  std::byte* base_;
  size_t capacity_;
  size_t used_ = 0;
  std::string owner_;
};

struct DataStats {
  SegmentStats segment;          // capacity = arena extents held (live + cached)
  size_t arena_bytes = 0;
  size_t arenas_live = 0;
  size_t arenas_cached = 0;      // free arenas kept for reuse
  uint64_t arenas_reused = 0;    // opens served from the free list
  double internal_fragmentation = 0.0;
  double external_fragmentation = 0.0;
};
nlohmann::json to_json(const DataStats& stats);

class DataSegment {
 public:
  DataSegment(VmuRegion& region, size_t arena_bytes);

  Result<std::unique_ptr<SessionArena>> open_arena(std::string owner);
  // Changes the arena size; only while no arena is live (cached ones are trimmed).
  Status set_arena_bytes(size_t bytes);
  size_t arena_bytes() const;
  // Returns cached free arenas to the region; the bytes returned.
  size_t trim();
  DataStats stats() const;
  Status check_invariants() const;

 private:
  friend class SessionArena;
  void release(SessionArena& arena);
  void note_allocation(size_t grown_bytes);
  size_t trim_locked();  // an arena's bump pointer moved up

  VmuRegion& region_;
  mutable std::mutex mutex_;
  size_t arena_bytes_;
  std::vector<std::byte*> cached_;
  std::vector<const SessionArena*> live_;
  SegmentStats stats_;
  uint64_t reused_ = 0;
};

}  // namespace djinn
