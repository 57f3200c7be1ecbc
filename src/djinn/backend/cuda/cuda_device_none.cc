#include "djinn/backend/cuda/cuda_device.h"

namespace djinn {

CudaDeviceInfo cuda_device_info() {
  CudaDeviceInfo info;
  info.error = "built without CUDA";
  return info;
}

}  // namespace djinn
