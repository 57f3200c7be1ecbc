// Backend: the interface every compute backend (cpu, cuda) implements. A backend
// runs single ops on memory it can address and owns its raw allocations and
// streams; it knows nothing of sessions, graphs or segments (that is vmu/ and exec/).
//
// Threads: a Backend instance is used by one thread at a time (the executor's).
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string_view>

#include "djinn/core/shape.h"
#include "djinn/core/status.h"
#include "djinn/core/tensor.h"
#include "djinn/graph/op.h"

namespace djinn {

enum class DeviceKind : uint8_t { kCpu, kCuda };
const char* device_name(DeviceKind device);

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
};

// Returns the backend for `device`, or an error if it is not built or has no device.
Result<std::unique_ptr<Backend>> make_backend(DeviceKind device);

}  // namespace djinn
