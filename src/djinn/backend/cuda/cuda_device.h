// What the CUDA runtime says about this machine. Compiled from cuda_device.cu when
// djinn is built with DJINN_CUDA, from cuda_device_none.cc otherwise, so callers
// never need an #ifdef.
#pragma once

#include <string>

namespace djinn {

struct CudaDeviceInfo {
  bool built = false;       // djinn was compiled with the CUDA backend
  int device_count = 0;     // visible devices (0 when none or the driver is missing)
  std::string name;         // device 0's name
  size_t free_bytes = 0;    // device 0's free memory
  size_t total_bytes = 0;   // device 0's total memory
  std::string error;        // why device_count is 0, if it is
};

CudaDeviceInfo cuda_device_info();

}  // namespace djinn
