// Backend: the interface every compute backend (cpu, cuda) implements. A backend
// runs single ops on memory it can address and owns its raw allocations and
// streams; it knows nothing of sessions, graphs or segments (that is vmu/ and exec/).
//
// Memory model: a backend's allocations may not be addressable from the host (cuda).
// Host code never dereferences them unless host_addressable(); it moves bytes with
// copy() / zero() and reads results after synchronize().
//
// Queues: kCompute is the order ops run in (the CUDA compute stream; on the CPU the
// calling thread). kSwapOut / kSwapIn are the SwapManager's copy queues (CUDA: one
// stream each), so swaps overlap compute.
//
// Threads: run_op, zero, synchronize, copy(..., kCompute), copy_async and
// compute_waits_for from one thread at a time (the executor's); copy(..., kSwapOut) and
// copy(..., kSwapIn) each from one other thread at a time, concurrently with compute.
// allocate / deallocate / pin_host are thread-safe; a QueueEvent from any thread.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <string_view>

#include "djinn/core/shape.h"
#include "djinn/core/status.h"
#include "djinn/core/tensor.h"
#include "djinn/graph/op.h"

namespace djinn {

enum class DeviceKind : uint8_t { kCpu, kCuda };
const char* device_name(DeviceKind device);

// One contiguous copy: `bytes` from `src` to `dst`, either of which may be host or
// device memory.
struct CopyRegion {
  void* dst = nullptr;
  const void* src = nullptr;
  size_t bytes = 0;
};

// `height` copies of `width` bytes each, the i-th from src + i * src_pitch to
// dst + i * dst_pitch: what one 2D copy (cudaMemcpy2DAsync) moves. A session's KV
// slots are equal runs at a constant stride, so its swap is one such copy.
struct PitchedCopy {
  void* dst = nullptr;
  size_t dst_pitch = 0;
  const void* src = nullptr;
  size_t src_pitch = 0;
  size_t width = 0;
  size_t height = 0;
};
// The regions as one pitched copy, if they are one: at least two, all of the same
// non-zero size, their sources and their destinations each at a constant stride no
// smaller than that size (rows in address order, none overlapping the next).
std::optional<PitchedCopy> as_pitched_copy(std::span<const CopyRegion> regions);

enum class CopyQueue : uint8_t { kCompute, kSwapOut, kSwapIn };

// What an asynchronous swap copy is for, as far as waiting for it goes (copy_async):
//  kAhead        nothing is ordered after it yet: every swap-out, and a swap-in the
//                policy starts before the session's next step. A backend may finish a
//                small one before copy_async returns (CUDA: Note [Waited small swaps]).
//  kStepFollows  a swap-in whose session's step is issued next and ordered after the
//                copy on the device (compute_waits_for): never waited for on the host.
enum class SwapUse : uint8_t { kAhead, kStepFollows };

// A point on one of a backend's queues (CUDA: an event recorded on a stream): done once
// everything issued there before it has finished.
class QueueEvent {
 public:
  virtual ~QueueEvent() = default;
  // Whether the work before the event has finished (never blocks).
  virtual bool done() = 0;
  // Blocks until done; returns the work's error, if any.
  virtual Status wait() = 0;
  // Time of the copies, seconds: device time between the copy_async call and the event,
  // or host time when the backend waited for them in copy_async; 0 when the backend
  // cannot tell. Valid once done.
  virtual double elapsed_seconds() { return 0; }
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual DeviceKind device() const = 0;

  // Runs `op` on `inputs`, writing `output` (pre-allocated by the caller with the
  // shape shape inference gave, or input 0's memory for aliasing ops). `bindings`
  // gives the step's seq / past. Errors that depend on data (a token id outside the
  // vocabulary, a KV cache that is full) come back as a Status.
  // `inputs` point at views the caller keeps (the executor binds them once per plan).
  virtual Status run_op(OpKind op, const OpAttrs& attrs, std::span<const TensorView* const> inputs,
                        const TensorView& output, const SymbolBindings& bindings) = 0;

  // Raw memory on this backend's device; `alignment` is a power of two.
  virtual void* allocate(size_t bytes, size_t alignment) = 0;
  virtual void deallocate(void* pointer) = 0;
  // Memory the device could still give (CPU: the kernel's MemAvailable), bytes.
  virtual size_t free_memory_bytes() const = 0;

  // Whether host code may read and write allocate()'s memory directly (CPU: yes).
  virtual bool host_addressable() const = 0;
  // Copies every region on `queue` and returns once all of them are done. On kCompute
  // the copies are ordered after every op issued before. Host memory that pin_host()
  // registered moves at DMA speed; other host memory works, slower.
  virtual Status copy(std::span<const CopyRegion> regions, CopyQueue queue) = 0;
  // Asynchronous copies, for backends whose queues run on their own (CUDA streams):
  // issues every region on `queue` (a swap queue), ordered after the compute queue's
  // work so far (the bytes were last written there), and returns without waiting; the
  // event completes with the copies. (For kAhead a backend may wait for a copy so small
  // that tracking it would cost more than its transfer; its event is then done at
  // once. Never for kStepFollows.) Backends without such queues (CPU) return
  // kUnimplemented and the caller copies with copy() on a thread of its own.
  virtual bool supports_async_copy() const { return false; }
  virtual Result<std::shared_ptr<QueueEvent>> copy_async(std::span<const CopyRegion> /*regions*/, CopyQueue /*queue*/,
                                                         SwapUse /*use*/) {
    return unimplemented("this backend has no asynchronous copy queues");
  }
  // Orders the compute queue after `event` on the device: ops issued from now on run
  // once it is done, and the host does not wait (CUDA: cudaStreamWaitEvent). Backends
  // without device queues wait on the host.
  virtual Status compute_waits_for(QueueEvent& event) { return event.wait(); }
  // Zeroes `bytes` of device memory at `dst`, in compute order.
  virtual Status zero(void* dst, size_t bytes) = 0;
  // Waits for every op issued on the compute queue; returns the first error a kernel
  // reported since the last call (CUDA kernels flag bad data — an id outside the
  // vocabulary, a position past the KV capacity — on the device). The CPU backend
  // reports such errors from run_op itself, so this returns ok at once.
  virtual Status synchronize() = 0;
  // Page-locks host memory [pointer, pointer + bytes) for fast copies; unpin_host undoes
  // it. CPU: nothing to do.
  virtual Status pin_host(void* pointer, size_t bytes) = 0;
  virtual void unpin_host(void* pointer) = 0;

  // Step capture (CUDA graphs). A backend that supports it records the ops issued on
  // the compute queue between begin_capture() and end_capture() without running them;
  // replay() issues them all again in one launch, with the pointers and arguments they
  // had when captured. The caller replays only while every pointer and shape is as it
  // was (the executor keys captures by plan and bindings). A backend may invalidate
  // captures (when memory they reference moves): replay() then returns false and the
  // caller runs the ops itself. Only the compute thread captures.
  virtual bool supports_capture() const { return false; }
  virtual Status begin_capture() { return unimplemented("this backend cannot capture steps"); }
  virtual Result<uint64_t> end_capture() { return unimplemented("this backend cannot capture steps"); }
  virtual void abort_capture() {}
  virtual Result<bool> replay(uint64_t /*capture*/) { return false; }
  virtual void release_capture(uint64_t /*capture*/) {}

  // Convenience wrappers over copy() on the compute queue.
  Status upload(void* device_dst, const void* host_src, size_t bytes) {
    const CopyRegion region{device_dst, host_src, bytes};
    return copy({&region, 1}, CopyQueue::kCompute);
  }
  Status download(void* host_dst, const void* device_src, size_t bytes) {
    const CopyRegion region{host_dst, device_src, bytes};
    return copy({&region, 1}, CopyQueue::kCompute);
  }
};

// Returns the backend for `device`, or an error if it is not built or has no device.
Result<std::unique_ptr<Backend>> make_backend(DeviceKind device);

}  // namespace djinn
