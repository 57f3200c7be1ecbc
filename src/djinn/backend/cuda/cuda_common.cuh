// Device helpers shared by the CUDA backend's .cu files (not a public header): element
// conversions, 4-element vector loads / stores, warp and block reductions, the data
// error record, and the dtype dispatch of launchers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <utility>

#include "djinn/backend/cuda/cuda_kernels.h"

namespace djinn::gpu::detail {

inline constexpr unsigned kFullMask = 0xffffffffu;

// ---- element conversions (widening is exact; narrowing rounds to nearest even) ----

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Two 16-bit values packed in a word (lower address in the low half) as floats.
__device__ __forceinline__ float2 unpack2(uint32_t bits, __half) {
  __half2 h;
  memcpy(&h, &bits, sizeof h);
  return __half22float2(h);
}
__device__ __forceinline__ float2 unpack2(uint32_t bits, __nv_bfloat16) {
  return make_float2(__uint_as_float(bits << 16), __uint_as_float(bits & 0xffff0000u));
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi, __half) {
  const __half2 h = __floats2half2_rn(lo, hi);
  uint32_t bits;
  memcpy(&bits, &h, sizeof bits);
  return bits;
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi, __nv_bfloat16) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  uint32_t bits;
  memcpy(&bits, &h, sizeof bits);
  return bits;
}

// ---- four consecutive elements; the pointer is aligned to 4 elements ----

__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
template <typename T>  // __half or __nv_bfloat16: one 8-byte load
__device__ __forceinline__ float4 load4(const T* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 lo = unpack2(u.x, T{}), hi = unpack2(u.y, T{});
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}
__device__ __forceinline__ void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
template <typename T>
__device__ __forceinline__ void store4(T* p, float4 v) {
  *reinterpret_cast<uint2*>(p) = make_uint2(pack2(v.x, v.y, T{}), pack2(v.z, v.w, T{}));
}

inline bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// ---- reductions ----

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

template <typename Op>
__device__ __forceinline__ float warp_reduce(float v, Op op) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// Reduces `v` over the whole block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. `scratch` is 32 floats of shared memory; every thread of
// the block must call this (it holds barriers), and it may be called again at once.
template <typename Op>
__device__ __forceinline__ float block_reduce(float v, Op op, float identity, float* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_reduce(v, op);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : identity;
  v = warp_reduce(v, op);
  __syncthreads();  // every warp has read scratch before a later call overwrites it
  return v;
}

// ---- data errors ----

// Records the first data error of the stream's work since the last reset.
__device__ __forceinline__ void report_error(DeviceError* error, int32_t code, int64_t a, int64_t b, int64_t c) {
  if (atomicCAS(&error->code, 0, code) == 0) {
    error->values[0] = a;
    error->values[1] = b;
    error->values[2] = c;
  }
}

// ---- host-side dispatch ----

// Calls f(T{}) with T the C++ type of `dtype`.
template <typename F>
cudaError_t with_dtype(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::kF32: return f(float{});
    case Dtype::kF16: return f(__half{});
    case Dtype::kBF16: return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

// Blocks for a grid-stride loop over `units` work items of `threads` each.
inline unsigned grid_for(int64_t units, int threads) {
  const int64_t blocks = (units + threads - 1) / threads;
  constexpr int64_t kMaxBlocks = 16384;  // enough to fill any GPU; the loop covers the rest
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

// ---- programmatic dependent launch (Hopper) ----
//
// Note [Programmatic dependent launch]: a decode step is ~700 short kernels, and
// between two of them the GPU drains one grid and only then launches the next: a
// microsecond or so each. Launched with
// cudaLaunchAttributeProgrammaticStreamSerialization (detail::launch), a kernel may be
// scheduled while the one before it is still finishing; it then must not touch memory
// until griddepcontrol.wait returns, which is once every earlier grid has completed
// and flushed its memory. So every kernel of the backend opens with
// await_prior_grids(). Past the wait a kernel lets its own dependents be scheduled:
// they take only SM slots its blocks leave free, and wait for it in turn. (Triggering
// before the wait let a chain of kernels become resident at once, each waiting on the
// one before, crowding out the one running: an H200 decode step went from 9.16 to 9.67
// ms; triggered after it, 9.52 -> 9.00 ms against plain launches.) In a stream capture
// the attribute becomes a programmatic edge of the graph. Without the attribute
// (DJINN_CUDA_PDL=0, or a kernel launched the plain way) the wait returns at once.
__device__ __forceinline__ void await_prior_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Launches `kernel` on `stream`, with programmatic stream serialization unless
// switched off (set_programmatic_launch). Returns the launch's error.
template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                   Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = programmatic_launch() ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace djinn::gpu::detail
