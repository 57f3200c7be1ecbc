#include <cuda_runtime.h>

#include "djinn/backend/cuda/cuda_device.h"

namespace djinn {

CudaDeviceInfo cuda_device_info() {
  CudaDeviceInfo info;
  info.built = true;
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    info.error = cudaGetErrorString(status);
    return info;
  }
  info.device_count = count;
  if (count == 0) {
    info.error = "cudaGetDeviceCount returned 0";
    return info;
  }
  cudaDeviceProp properties{};
  if (cudaGetDeviceProperties(&properties, 0) == cudaSuccess) info.name = properties.name;
  if (cudaSetDevice(0) == cudaSuccess) cudaMemGetInfo(&info.free_bytes, &info.total_bytes);
  return info;
}

}  // namespace djinn
