// TunedGemm: the cuda backend's 16-bit GEMMs through cuBLASLt, with the algorithm for
// each shape chosen by timing. cuBLAS's default choice leaves 3-7 % on the table for
// decode-shaped products (measured on an H200 for Llama-2-13B shapes, M = 1..16).
//
//   out[m, n] f32 = x[m, k] . op(w), x and w f16 or bf16 (the same), f32 accumulation;
//   w is [n, k] row-major when transpose_b (nn.Linear), else [k, n] (GPT-2 Conv1D).
//
// Tuning: the first product of a shape outside a capture times every algorithm the
// heuristics offer (up to kCandidates), each on the real operands with the L2 cache
// flushed before every timed run, and keeps the fastest. The choice is process-wide:
// every backend of the process uses the same algorithm for a shape, so their results
// agree bit for bit. A product issued during a stream capture uses the tuned algorithm
// if there is one, else the heuristics' first (and does not tune).
// Threads: one TunedGemm per backend, used by its compute thread.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

#include "djinn/core/status.h"

namespace djinn {

class TunedGemm {
 public:
  static constexpr int kCandidates = 8;

  TunedGemm() = default;
  ~TunedGemm();
  TunedGemm(const TunedGemm&) = delete;
  TunedGemm& operator=(const TunedGemm&) = delete;

  // `workspace` (workspace_bytes) is cuBLASLt's scratch, ordered on `stream`.
  Status init(void* workspace, size_t workspace_bytes);
  // `type` is CUDA_R_16F or CUDA_R_16BF. `capturing`: the stream is being captured.
  Status run(int m, int n, int k, bool transpose_b, cudaDataType_t type, const void* w, const void* x, float* out,
             cudaStream_t stream, bool capturing);
  // Products tuned by this process so far.
  static size_t tuned_shapes();

 private:
  using Shape = std::tuple<int, int, int, bool, int>;  // m, n, k, transpose_b, type
  struct Descriptors {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t w = nullptr, x = nullptr, out = nullptr;
  };
  Result<Descriptors*> descriptors(const Shape& shape);
  Result<cublasLtMatmulAlgo_t> tune(Descriptors& d, const void* w, const void* x, float* out,
                                    cudaStream_t stream);
  Status matmul(Descriptors& d, const cublasLtMatmulAlgo_t& algo, const void* w, const void* x, float* out,
                cudaStream_t stream);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Shape, Descriptors> descriptors_;
};

}  // namespace djinn
