#include "djinn/vmu/text_segment.h"

#include <fmt/format.h>

#include <algorithm>

namespace djinn {

TextAllocation::~TextAllocation() { segment_.release(*this); }

Result<std::unique_ptr<TextAllocation>> TextSegment::append(size_t bytes, std::string owner) {
  DJINN_ASSIGN_OR_RETURN(std::byte * data, region_.take(bytes, "Text", fmt::format("model {}", owner)));
  std::unique_ptr<TextAllocation> allocation(new TextAllocation(*this, data, bytes, std::move(owner)));
  std::lock_guard lock(mutex_);
  stats_.capacity += bytes;
  stats_.used += bytes;
  stats_.peak = std::max(stats_.peak, stats_.used);
  ++stats_.allocations;
  live_.push_back(allocation.get());
  return allocation;
}

void TextSegment::release(TextAllocation& allocation) {
  region_.give_back(allocation.data_);
  std::lock_guard lock(mutex_);
  stats_.capacity -= allocation.bytes_;
  stats_.used -= allocation.bytes_;
  std::erase(live_, &allocation);
}

SegmentStats TextSegment::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

size_t TextSegment::models() const {
  std::lock_guard lock(mutex_);
  return live_.size();
}

Status TextSegment::check_invariants() const {
  std::lock_guard lock(mutex_);
  size_t total = 0;
  for (const TextAllocation* a : live_) {
    if (!region_.contains(a->data(), a->bytes()))
      return internal_error(fmt::format("Text: model {} lies outside the region", a->owner()));
    total += a->bytes();
  }
  if (total != stats_.used) return internal_error(fmt::format("Text: used {} != sum of models {}", stats_.used, total));
  if (stats_.used > stats_.peak) return internal_error("Text: used above peak");
  return {};
}

}  // namespace djinn
