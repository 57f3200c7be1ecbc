// CUDA / cuBLAS errors as Status, for the host code of the cuda backend: every call
// is checked and a failure names the expression and the library's message.
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include "djinn/core/status.h"

namespace djinn {

inline Status cuda_status(cudaError_t error, const char* expression) {
  std::string message = fmt::format("{} failed: {} ({})", expression, cudaGetErrorString(error), cudaGetErrorName(error));
  if (error == cudaErrorMemoryAllocation) return out_of_memory(std::move(message));
  return internal_error(std::move(message));
}

inline Status cublas_status(cublasStatus_t status, const char* expression) {
  std::string message = fmt::format("{} failed: {}", expression, cublasGetStatusString(status));
  if (status == CUBLAS_STATUS_ALLOC_FAILED) return out_of_memory(std::move(message));
  return internal_error(std::move(message));
}

}  // namespace djinn

// Returns a Status naming `expr` and the CUDA error if `expr` is not cudaSuccess.
#define DJINN_CUDA_RETURN_IF_ERROR(expr)                                                           \
  do {                                                                                             \
    const cudaError_t djinn_cuda_error_ = (expr);                                                  \
    if (djinn_cuda_error_ != cudaSuccess) return ::djinn::cuda_status(djinn_cuda_error_, #expr);   \
  } while (0)

// The same for cuBLAS / cuBLASLt calls.
#define DJINN_CUBLAS_RETURN_IF_ERROR(expr)                                                         \
  do {                                                                                             \
    const cublasStatus_t djinn_cublas_status_ = (expr);                                            \
    if (djinn_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                             \
      return ::djinn::cublas_status(djinn_cublas_status_, #expr);                                  \
  } while (0)
