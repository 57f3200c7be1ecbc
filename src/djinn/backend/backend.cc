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

std::optional<PitchedCopy> as_pitched_copy(std::span<const CopyRegion> regions) {
  if (regions.size() < 2 || regions[0].bytes == 0) return std::nullopt;
  const auto address = [](const void* p) { return reinterpret_cast<uintptr_t>(p); };
  const size_t width = regions[0].bytes;
  // Rows in address order only (the pitches are unsigned).
  if (address(regions[1].src) < address(regions[0].src) || address(regions[1].dst) < address(regions[0].dst))
    return std::nullopt;
  const size_t src_pitch = address(regions[1].src) - address(regions[0].src);
  const size_t dst_pitch = address(regions[1].dst) - address(regions[0].dst);
  if (src_pitch < width || dst_pitch < width) return std::nullopt;
  for (size_t i = 1; i < regions.size(); ++i) {
    const CopyRegion& r = regions[i];
    if (r.bytes != width || address(r.src) != address(regions[0].src) + i * src_pitch ||
        address(r.dst) != address(regions[0].dst) + i * dst_pitch)
      return std::nullopt;
  }
  return PitchedCopy{regions[0].dst, dst_pitch, regions[0].src, src_pitch, width, regions.size()};
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
