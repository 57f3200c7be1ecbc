// CpuBackend: the reference backend. Dispatches each op of the op table to its
// kernel in cpu_kernels.h; "device memory" is aligned host memory.
#pragma once

#include "djinn/backend/backend.h"

namespace djinn {

class CpuBackend : public Backend {
 public:
  // Starts the process's compute pool (once) so that its threads and OpenBLAS's
  // per-thread buffers exist before the first step.
  CpuBackend();
  DeviceKind device() const override { return DeviceKind::kCpu; }
  Status run_op(OpKind op, const OpAttrs& attrs, std::span<const TensorView* const> inputs, const TensorView& output,
                const SymbolBindings& bindings) override;
  void* allocate(size_t bytes, size_t alignment) override;
  void deallocate(void* pointer) override;
  size_t free_memory_bytes() const override;
  bool host_addressable() const override { return true; }
  Status copy(std::span<const CopyRegion> regions, CopyQueue queue) override;
  Status zero(void* dst, size_t bytes) override;
  Status synchronize() override { return {}; }
  Status pin_host(void*, size_t) override { return {}; }
  void unpin_host(void*) override {}
};

}  // namespace djinn
