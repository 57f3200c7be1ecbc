// TextSegment: model weights. One extent of the VMU region per loaded model, sized
// exactly, weights appended inside it back to back; never fragmented inside.
// Sharing is by reference: every session of a model holds the same TextAllocation
// (through the Model), and loading a model a second time reuses it (the Runtime's
// model registry), so it costs no memory. The extent returns to the region when the
// last holder lets go.
// Threads: thread-safe.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "djinn/vmu/segment_stats.h"
#include "djinn/vmu/vmu_region.h"

namespace djinn {

class TextSegment;

// RAII handle of one model's weights extent.
class TextAllocation {
 public:
  ~TextAllocation();
  TextAllocation(const TextAllocation&) = delete;
  TextAllocation& operator=(const TextAllocation&) = delete;
  std::byte* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  const std::string& owner() const { return owner_; }

 private:
  friend class TextSegment;
  TextAllocation(TextSegment& segment, std::byte* data, size_t bytes, std::string owner)
      : segment_(segment), data_(data), bytes_(bytes), owner_(std::move(owner)) {}
  TextSegment& segment_;
  std::byte* data_;
  size_t bytes_;
  std::string owner_;
};

class TextSegment {
 public:
  explicit TextSegment(VmuRegion& region) : region_(region) {}

  Result<std::unique_ptr<TextAllocation>> append(size_t bytes, std::string owner);
  SegmentStats stats() const;
  size_t models() const;  // live allocations
  Status check_invariants() const;

 private:
  friend class TextAllocation;
  void release(TextAllocation& allocation);

  VmuRegion& region_;
  mutable std::mutex mutex_;
  SegmentStats stats_;
  std::vector<const TextAllocation*> live_;
};

}  // namespace djinn
