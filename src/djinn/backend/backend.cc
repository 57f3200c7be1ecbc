#include "djinn/backend/backend.h"

#include "djinn/backend/cpu/cpu_backend.h"
#include "djinn/backend/cuda/cuda_device.h"

namespace djinn {

const char* device_name(DeviceKind device) {
  switch (device) {
    case DeviceKind::kCpu: return "cpu";
    case DeviceKind::kCuda: return "cuda";
  }
  return "?";
}

Result<std::unique_ptr<Backend>> make_backend(DeviceKind device) {
  switch (device) {
    case DeviceKind::kCpu: return std::unique_ptr<Backend>(std::make_unique<CpuBackend>());
    case DeviceKind::kCuda: {
      const CudaDeviceInfo info = cuda_device_info();
      if (!info.built) return unimplemented("this djinn was built without CUDA (no nvcc at configure time)");
      if (info.device_count == 0) return not_found(fmt::format("no CUDA device: {}", info.error));
      return unimplemented(fmt::format("the cuda backend's kernels are not written yet (found {} device(s): {})",
                                       info.device_count, info.name));
    }
  }
  return internal_error("make_backend: unknown device");
}

}  // namespace djinn
