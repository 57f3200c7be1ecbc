// cuda_baselines.h for a djinn built without CUDA: every measurement reports why not.
#include "djinn/backend/cuda/cuda_baselines.h"

namespace djinn {

namespace {
constexpr const char* kNoCuda = "built without CUDA";
}  // namespace

const char* gemm_input_name(GemmInput input) {
  switch (input) {
    case GemmInput::kF16: return "f16";
    case GemmInput::kBF16: return "bf16";
  }
  return "?";
}

DeviceCopyBandwidth device_copy_bandwidth(size_t bytes, int repetitions) {
  DeviceCopyBandwidth result;
  result.error = kNoCuda;
  result.bytes = bytes;
  result.repetitions = repetitions;
  return result;
}

PinnedCopyBandwidth pinned_copy_bandwidth(size_t bytes, int repetitions) {
  PinnedCopyBandwidth result;
  result.error = kNoCuda;
  result.bytes = bytes;
  result.repetitions = repetitions;
  return result;
}

GemmThroughput cublas_gemm_tflops(int n, GemmInput input, bool f32_output, int repetitions) {
  GemmThroughput result;
  result.error = kNoCuda;
  result.n = n;
  result.input = input;
  result.f32_output = f32_output;
  result.repetitions = repetitions;
  return result;
}

}  // namespace djinn
