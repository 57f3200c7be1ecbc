// StackSegment: the activations of one step. A bump pointer over one region extent;
// a step pushes a frame of the plan's peak bytes (the meta-simulator placed every
// activation at an offset inside it) and popping the frame resets the pointer to its
// watermark, so nothing allocated during a step outlives it.
//
// Capacity grows to the largest frame asked for (a new extent, only while no frame is
// open); reserve() grows it ahead of time, e.g. to the peak of a model's plans at load.
// Threads: thread-safe; frames nest LIFO (one executor pushes at a time).
#pragma once

#include <mutex>
#include <string_view>

#include "djinn/vmu/segment_stats.h"
#include "djinn/vmu/vmu_region.h"

namespace djinn {

class StackSegment;

class StackFrame {
 public:
  StackFrame() = default;
  StackFrame(StackFrame&& other) noexcept { *this = std::move(other); }
  StackFrame& operator=(StackFrame&& other) noexcept;
  ~StackFrame() { pop(); }
  std::byte* base() const { return base_; }
  size_t bytes() const { return bytes_; }
  void pop();  // resets the stack to this frame's watermark (idempotent)

 private:
  friend class StackSegment;
  StackSegment* stack_ = nullptr;
  std::byte* base_ = nullptr;
  size_t bytes_ = 0;
  size_t watermark_ = 0;
};

class StackSegment {
 public:
  explicit StackSegment(VmuRegion& region) : region_(region) {}
  ~StackSegment();

  Status reserve(size_t bytes, std::string_view who);
  Result<StackFrame> push(size_t bytes, std::string_view who);
  SegmentStats stats() const;
  Status check_invariants() const;

 private:
  friend class StackFrame;
  static constexpr size_t kFrameAlignment = 64;
  Status grow_locked(size_t bytes, std::string_view who);
  void pop_to(size_t watermark);

  VmuRegion& region_;
  mutable std::mutex mutex_;
  std::byte* base_ = nullptr;
  size_t open_frames_ = 0;
  SegmentStats stats_;
};

}  // namespace djinn
