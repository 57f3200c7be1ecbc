#include "djinn/vmu/stack_segment.h"

#include <fmt/format.h>

#include <algorithm>

namespace djinn {

StackFrame& StackFrame::operator=(StackFrame&& other) noexcept {
  if (this != &other) {
    pop();
    stack_ = std::exchange(other.stack_, nullptr);
    base_ = other.base_;
    bytes_ = other.bytes_;
    watermark_ = other.watermark_;
  }
  return *this;
}

void StackFrame::pop() {
  if (stack_ != nullptr) std::exchange(stack_, nullptr)->pop_to(watermark_);
}

StackSegment::~StackSegment() {
  if (base_ != nullptr) region_.give_back(base_);
}

Status StackSegment::grow_locked(size_t bytes, std::string_view who) {
  if (bytes <= stats_.capacity) return {};
  if (open_frames_ > 0)
    return out_of_memory(fmt::format("Stack segment: {} asked for {} while a frame is open; capacity {}", who,
                                     format_bytes(bytes), format_bytes(stats_.capacity)));
  // No frame is open, so the old extent holds nothing: give it back first, so growing
  // needs only the new size free, not old + new.
  const size_t old_capacity = stats_.capacity;
  if (base_ != nullptr) region_.give_back(base_);
  base_ = nullptr;
  stats_.capacity = 0;
  Result<std::byte*> grown = region_.take(bytes, "Stack", who, /*prefault=*/true);
  if (!grown.ok()) {
    if (old_capacity > 0) {  // best effort: keep the old stack
      Result<std::byte*> old = region_.take(old_capacity, "Stack", who);
      if (old.ok()) {
        base_ = *old;
        stats_.capacity = old_capacity;
      }
    }
    return grown.status();
  }
  base_ = *grown;
  stats_.capacity = bytes;
  return {};
}

Status StackSegment::reserve(size_t bytes, std::string_view who) {
  std::lock_guard lock(mutex_);
  return grow_locked(bytes, who);
}

Result<StackFrame> StackSegment::push(size_t bytes, std::string_view who) {
  std::lock_guard lock(mutex_);
  const size_t start = (stats_.used + kFrameAlignment - 1) / kFrameAlignment * kFrameAlignment;
  if (bytes > region_.capacity() || start > region_.capacity() - bytes)
    return out_of_memory(fmt::format("Stack segment: {} asked for a frame of {}; the VMU holds {}", who,
                                     format_bytes(bytes), format_bytes(region_.capacity())));
  if (start + bytes > stats_.capacity) DJINN_RETURN_IF_ERROR(grow_locked(start + bytes, who));
  StackFrame frame;
  frame.stack_ = this;
  frame.base_ = base_ + start;
  frame.bytes_ = bytes;
  frame.watermark_ = stats_.used;
  stats_.used = start + bytes;
  stats_.peak = std::max(stats_.peak, stats_.used);
  ++stats_.allocations;
  ++open_frames_;
  return frame;
}

void StackSegment::pop_to(size_t watermark) {
  std::lock_guard lock(mutex_);
  DJINN_ASSERT(open_frames_ > 0 && watermark <= stats_.used, "stack frames popped out of order");
  stats_.used = watermark;
  --open_frames_;
}

SegmentStats StackSegment::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

Status StackSegment::check_invariants() const {
  std::lock_guard lock(mutex_);
  if (stats_.used > stats_.capacity) return internal_error("Stack: used above capacity");
  if (stats_.used > stats_.peak) return internal_error("Stack: used above peak");
  if (open_frames_ == 0 && stats_.used != 0) return internal_error("Stack: no frame open but the pointer is not reset");
  if (base_ != nullptr && !region_.contains(base_, stats_.capacity)) return internal_error("Stack: outside the region");
  return {};
}

}  // namespace djinn
