#include "djinn/backend/backend.h"

#include "djinn/backend/cpu/cpu_backend.h"
#include "djinn/backend/cuda/cuda_device.h"
#ifdef DJINN_HAVE_CUDA
#include "djinn/backend/cuda/cuda_backend.h"
#endif

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
#ifdef DJINN_HAVE_CUDA
      DJINN_ASSIGN_OR_RETURN(std::unique_ptr<CudaBackend> cuda, CudaBackend::create());
      return std::unique_ptr<Backend>(std::move(cuda));
#else
      return internal_error("make_backend: a CUDA device was reported by a build without the cuda backend");
#endif
    }
  }
  return internal_error("make_backend: unknown device");
}

}  // namespace djinn
