// Hardware ceilings the GPU benchmarks compare against, measured on device 0:
//
//   device_copy_bandwidth   cudaMemcpyAsync device -> device; GB/s counts bytes read
//                           plus bytes written (2 x bytes / time), the memory-bound
//                           ceiling for kernels counted the same way.
//   pinned_copy_bandwidth   cudaHostAlloc'd host <-> device cudaMemcpyAsync: host to
//                           device alone, device to host alone, and both at once on
//                           two streams (total GB/s of both directions): the ceiling
//                           for swapping KV caches.
//   cublas_gemm_tflops      an n x n x n cublasGemmEx, f16 or bf16 inputs, f32
//                           accumulation (CUBLAS_COMPUTE_32F), TFLOP/s = 2 n^3 / time:
//                           the compute-bound ceiling for matmul.
//
// Method: inputs are random and non-zero (zeros can run faster than real data); each
// measurement is warmed up first (module load, cuBLAS handle and heuristics stay out),
// then timed with cudaEvents, one event pair per repetition, and the median is
// reported. Where one set of buffers would fit in L2, repetitions rotate over enough
// sets that the data touched between two uses of a set exceeds twice the L2 size, so
// the numbers are DRAM's, not the cache's.
//
// Every CUDA / cuBLAS call is checked; a failure comes back as ok = false with the
// call and the error in `error`, never as a crash. Built from cuda_baselines.cu with
// CUDA, from cuda_baselines_none.cc without (every function: ok = false, "built without
// CUDA"). Plain C++17, so nvcc can compile the .cu (CMAKE_CUDA_STANDARD is 17).
//
// These change the device's memory contents only; they never touch clocks or settings.
#pragma once

#include <cstddef>
#include <string>

namespace djinn {

struct DeviceCopyBandwidth {
  bool ok = false;
  std::string error;     // why not ok: the failing call and CUDA's message
  std::string device;    // device 0's name
  size_t bytes = 0;      // bytes per copy
  int buffer_sets = 0;   // (src, dst) pairs rotated over
  int repetitions = 0;   // timed copies (after warm-up)
  double median_ms = 0;  // per copy
  double min_ms = 0;
  double gbps = 0;       // 2 * bytes / median time, 1e9 bytes / s
};

struct PinnedCopyBandwidth {
  bool ok = false;
  std::string error;
  std::string device;
  size_t bytes = 0;           // bytes per copy, each direction
  int repetitions = 0;
  double h2d_median_ms = 0;   // host -> device alone
  double d2h_median_ms = 0;   // device -> host alone
  double both_median_ms = 0;  // both at once (start to the later finish)
  double h2d_gbps = 0;        // bytes / h2d time
  double d2h_gbps = 0;        // bytes / d2h time
  double both_gbps = 0;       // 2 * bytes / both time: total of the two directions
};

enum class GemmInput { kF16, kBF16 };
const char* gemm_input_name(GemmInput input);

struct GemmThroughput {
  bool ok = false;
  std::string error;
  std::string device;
  int n = 0;               // m = n = k
  GemmInput input = GemmInput::kF16;
  bool f32_output = true;  // C in f32 (what djinn's matmul writes), else in the input dtype
  int buffer_sets = 0;     // (A, B, C) triples rotated over
  int repetitions = 0;
  double median_ms = 0;
  double min_ms = 0;
  double tflops = 0;       // 2 n^3 / median time, 1e12 / s
};

// `bytes` per copy (e.g. 1 GiB). Rounded down to a multiple of 256; must be >= 256.
DeviceCopyBandwidth device_copy_bandwidth(size_t bytes, int repetitions = 20);
// `bytes` per direction (e.g. 256 MiB). Rounded down to a multiple of 256; >= 256.
PinnedCopyBandwidth pinned_copy_bandwidth(size_t bytes, int repetitions = 10);
// n = 8192 for the ceiling (then one triple is 8192^2 x (2 + 2 + 4) bytes = 512 MiB).
GemmThroughput cublas_gemm_tflops(int n, GemmInput input, bool f32_output = true, int repetitions = 20);

}  // namespace djinn
