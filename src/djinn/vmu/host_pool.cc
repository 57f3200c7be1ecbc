#include "djinn/vmu/host_pool.h"

#include <fmt/format.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "djinn/backend/backend.h"
#include "djinn/core/parallel.h"
#include "djinn/vmu/vmu_region.h"

namespace djinn {
namespace {

constexpr size_t kPage = 4096;

// Touches every page of [begin, begin + bytes) from all cores at once.
void populate(std::byte* begin, size_t bytes) {
  const auto pages = static_cast<int64_t>((bytes + kPage - 1) / kPage);
  constexpr int64_t kSerialBelow = (int64_t{64} << 20) / static_cast<int64_t>(kPage);  // 64 MiB
  parallel_ranges(pages, kSerialBelow, [begin](int64_t first, int64_t last) {
    for (int64_t page = first; page < last; ++page) begin[static_cast<size_t>(page) * kPage] = std::byte{0};
  });
}

}  // namespace

Result<std::unique_ptr<HostPool>> HostPool::create(size_t bytes, Backend* pinner, Growth growth, size_t chunk_bytes) {
  bytes = bytes / kSliceAlignment * kSliceAlignment;
  if (bytes > (size_t{1} << 50))
    return out_of_memory(fmt::format("HostPool: {} is more than any machine has", format_bytes(bytes)));
  if (chunk_bytes == 0) chunk_bytes = kDefaultChunkBytes;
  chunk_bytes = std::max<size_t>(chunk_bytes / kPage * kPage, kPage);
  std::byte* base = nullptr;
  if (bytes > 0) {
    void* mapped = mmap(nullptr, (bytes + kPage - 1) / kPage * kPage, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mapped == MAP_FAILED) return out_of_memory(fmt::format("HostPool: cannot reserve {}", format_bytes(bytes)));
    base = static_cast<std::byte*>(mapped);
  }
  std::unique_ptr<HostPool> pool(new HostPool(base, bytes, chunk_bytes, pinner));
  if (growth == Growth::kNow || bytes == 0) {
    pool->grow_all();
    DJINN_RETURN_IF_ERROR(pool->wait_ready());
  } else {
    // The first chunk is ready before create() returns; the rest follows.
    pool->grower_ = std::thread([p = pool.get()] { p->grow_all(); });
    while (pool->ready_bytes() == 0) {
      {
        std::lock_guard lock(pool->mutex_);
        if (pool->growth_done_) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::lock_guard lock(pool->mutex_);
    if (pool->ready_bytes() == 0 && !pool->growth_status_.ok()) return pool->growth_status_;
  }
  return pool;
}

HostPool::HostPool(std::byte* base, size_t bytes, size_t chunk_bytes, Backend* pinner)
    : base_(base), reserved_bytes_(bytes), chunk_bytes_(chunk_bytes), pinner_(pinner), allocator_(0, kSliceAlignment) {
  stats_.capacity = bytes;
}

void HostPool::grow_all() {
  const auto start = std::chrono::steady_clock::now();
  Status status;
  for (size_t at = 0; at < reserved_bytes_ && !stopping_.load(); at += chunk_bytes_) {
    const size_t size = std::min(chunk_bytes_, reserved_bytes_ - at);
    populate(base_ + at, size);
    if (pinner_ != nullptr) {
      status = pinner_->pin_host(base_ + at, size);
      if (!status.ok()) break;
    }
    std::lock_guard lock(mutex_);
    if (pinner_ != nullptr) ++pinned_chunks_;
    // A guard extent ends every chunk but the last, so no slice spans two chunks
    // (two pinned registrations).
    const bool last = at + size == reserved_bytes_;
    allocator_.grow(at + size, last ? 0 : kSliceAlignment);
    guard_bytes_ += last ? 0 : kSliceAlignment;
    ready_bytes_.store(at + size, std::memory_order_release);
  }
  std::lock_guard lock(mutex_);
  ready_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  growth_status_ = status.ok() ? Status{} : Status(status.code(), fmt::format("HostPool: pinning: {}", status.message()));
  growth_done_ = true;
}

void HostPool::join_grower() {
  std::lock_guard lock(join_mutex_);
  if (grower_.joinable()) grower_.join();
}

HostPool::~HostPool() {
  stopping_.store(true);
  join_grower();
  if (base_ == nullptr) return;
  if (pinner_ != nullptr)
    for (size_t chunk = 0; chunk < pinned_chunks_; ++chunk) pinner_->unpin_host(base_ + chunk * chunk_bytes_);
  munmap(base_, (reserved_bytes_ + kPage - 1) / kPage * kPage);
}

Status HostPool::wait_ready() {
  join_grower();
  std::lock_guard lock(mutex_);
  return growth_status_;
}

Result<std::byte*> HostPool::allocate(size_t bytes, std::string_view who) {
  std::lock_guard lock(mutex_);
  const std::optional<size_t> offset = allocator_.allocate(bytes);
  if (!offset)
    return out_of_memory(fmt::format("HostPool: {} asked for {}; {} free of {} ready ({} reserved; largest free slice {})",
                                     who, format_bytes(bytes), format_bytes(allocator_.free_bytes()),
                                     format_bytes(allocator_.capacity()), format_bytes(reserved_bytes_),
                                     format_bytes(allocator_.largest_free_extent())));
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

nlohmann::json HostPool::stats_json() const {
  std::lock_guard lock(mutex_);
  nlohmann::json out = to_json(stats_);
  out["ready_bytes"] = ready_bytes_.load();
  out["pinned"] = pinner_ != nullptr;
  out["ready_seconds"] = growth_done_ ? ready_seconds_ : -1.0;
  if (!growth_status_.ok()) out["growth_error"] = growth_status_.to_string();
  return out;
}

Status HostPool::check_invariants() const {
  std::lock_guard lock(mutex_);
  DJINN_RETURN_IF_ERROR(allocator_.check_invariants());
  if (stats_.used + guard_bytes_ != allocator_.capacity() - allocator_.free_bytes())
    return internal_error("HostPool: used is stale");
  return {};
}

}  // namespace djinn
