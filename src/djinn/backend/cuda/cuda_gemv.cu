// Decode GEMV: the products of a decode step with 16-bit nn.Linear weights. Contract in
// cuda_kernels.h (gemv).
//
// Why not cuBLAS: at one to four activation rows the product is a stream over the
// weight, and its speed is how many weight bytes are in flight. cuBLAS's choices for
// M = 1 read Llama-2-13B's weights at 2.2-2.6 TB/s on an H100 / H200 (a decode step
// 1.39x the copy bound); this kernel keeps 2 KiB per warp in flight with streaming
// loads that leave L1 to x. It also reads x as f32 and rounds it to the weight's dtype
// in registers, so the narrowing kernel before each GEMM disappears from the step.
#include "djinn/backend/cuda/cuda_common.cuh"
#include "djinn/backend/cuda/cuda_kernels.h"

namespace djinn::gpu {
namespace {

using detail::from_f32;
using detail::SumOp;
using detail::to_f32;
using detail::unpack2;
using detail::warp_reduce;

constexpr int kGemvWarps = 8;  // one output column per warp
constexpr int kGemvThreads = 32 * kGemvWarps;
// 16-byte weight loads in flight per lane. A product of few columns is one wave of
// short warps, whose time is mostly the first loads' latency: 8 at a time there; 4
// for the many-column ones, which 8 slowed (H200, Llama-2-13B shapes: 5120 x 5120 15.9
// vs 17.2 us with 8; 13824 x 5120 39.7 vs 35.8 us).
constexpr int64_t kWideUnrollMaxColumns = 8192;

// A weight load that bypasses L1 (read once) and may use the read-only path.
__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

// x rounded to T and widened back: what the activation is when fed to a 16-bit GEMM.
template <typename T>
__device__ __forceinline__ float rounded(float v) {
  return to_f32(from_f32<T>(v));
}

// acc[r] += dot(w8, round(x[r, col : col + 8])) for r < M; w8 is 8 weights of type T.
template <typename T, int M>
__device__ __forceinline__ void accumulate(const uint4& w8, const float* __restrict__ x, int64_t k, int64_t col,
                                           float (&acc)[M]) {
  const float2 w01 = unpack2(w8.x, T{}), w23 = unpack2(w8.y, T{}), w45 = unpack2(w8.z, T{}), w67 = unpack2(w8.w, T{});
#pragma unroll
  for (int r = 0; r < M; ++r) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(x + r * k + col));
    const float4 b = __ldg(reinterpret_cast<const float4*>(x + r * k + col + 4));
    float s = acc[r];
    s = fmaf(w01.x, rounded<T>(a.x), s);
    s = fmaf(w01.y, rounded<T>(a.y), s);
    s = fmaf(w23.x, rounded<T>(a.z), s);
    s = fmaf(w23.y, rounded<T>(a.w), s);
    s = fmaf(w45.x, rounded<T>(b.x), s);
    s = fmaf(w45.y, rounded<T>(b.y), s);
    s = fmaf(w67.x, rounded<T>(b.z), s);
    s = fmaf(w67.y, rounded<T>(b.w), s);
    acc[r] = s;
  }
}

// The products of one launch: block b computes columns of product g, where
// first_block[g] <= b < first_block[g + 1].
template <typename T>
struct Targets {
  const T* w[kMaxGemvGroup];
  float* out[kMaxGemvGroup];
  int64_t n[kMaxGemvGroup];
  unsigned first_block[kMaxGemvGroup + 1];
  int count;
};

// out_g[r, col] = sum_j round(x[r, j]) * w_g[col, j]: warp `col` reads weight row col
// in 8-element chunks, lane l taking chunks l, l + 32, ...; the partial sums meet in a
// warp reduction.
template <typename T, int M, int kUnroll>
__global__ void __launch_bounds__(kGemvThreads)
    gemv_kernel(const Targets<T> t, const float* __restrict__ x, int64_t k) {
  // This block's product (constant indices only: indexing the parameter by a variable
  // would copy it to local memory).
  const T* w = t.w[0];
  float* out = t.out[0];
  int64_t n = t.n[0];
  unsigned first = 0;
#pragma unroll
  for (int g = 1; g < kMaxGemvGroup; ++g)
    if (g < t.count && blockIdx.x >= t.first_block[g]) {
      w = t.w[g];
      out = t.out[g];
      n = t.n[g];
      first = t.first_block[g];
    }
  const int lane = threadIdx.x % 32;
  const int64_t col = static_cast<int64_t>(blockIdx.x - first) * kGemvWarps + threadIdx.x / 32;
  const auto* row = reinterpret_cast<const uint4*>(w + (col < n ? col : 0) * k);
  const int64_t chunks = k / 8;
  // Nothing writes weights during a step: their first loads go to L2 while the kernels
  // before this one finish (Note [Programmatic dependent launch]).
  for (int64_t c = lane; c < chunks && c < kUnroll * 32; c += 32)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(row + c));
  detail::await_prior_grids();
  if (col >= n) return;
  float acc[M] = {};
  int64_t c = lane;
  for (; c + (kUnroll - 1) * 32 < chunks; c += kUnroll * 32) {
    uint4 w8[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) w8[u] = load_streaming(row + c + u * 32);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) accumulate<T, M>(w8[u], x, k, (c + u * 32) * 8, acc);
  }
  for (; c < chunks; c += 32) accumulate<T, M>(load_streaming(row + c), x, k, c * 8, acc);
#pragma unroll
  for (int r = 0; r < M; ++r) {
    const float sum = warp_reduce(acc[r], SumOp{});
    if (lane == 0) out[r * n + col] = sum;
  }
}

template <typename T, int M>
cudaError_t launch(const GemvGroup& group, const float* x, int64_t k, cudaStream_t stream) {
  Targets<T> t{};
  t.count = group.count;
  int64_t blocks = 0, columns = 0;
  for (int g = 0; g < group.count; ++g) {
    t.w[g] = static_cast<const T*>(group.w[g]);
    t.out[g] = group.out[g];
    t.n[g] = group.n[g];
    t.first_block[g] = static_cast<unsigned>(blocks);
    blocks += (group.n[g] + kGemvWarps - 1) / kGemvWarps;
    columns += group.n[g];
  }
  t.first_block[group.count] = static_cast<unsigned>(blocks);
  const auto grid = static_cast<unsigned>(blocks);
  if (columns <= kWideUnrollMaxColumns)
    return detail::launch(gemv_kernel<T, M, 8>, grid, kGemvThreads, 0, stream, t, x, k);
  return detail::launch(gemv_kernel<T, M, 4>, grid, kGemvThreads, 0, stream, t, x, k);
}

template <typename T>
cudaError_t launch_rows(const GemvGroup& group, const float* x, int64_t m, int64_t k, cudaStream_t stream) {
  switch (m) {
    case 1: return launch<T, 1>(group, x, k, stream);
    case 2: return launch<T, 2>(group, x, k, stream);
    case 3: return launch<T, 3>(group, x, k, stream);
    case 4: return launch<T, 4>(group, x, k, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool gemv_supported(const void* w, Dtype dtype, const float* x, int64_t m, int64_t n, int64_t k) {
  return dtype != Dtype::kF32 && m >= 1 && m <= kMaxGemvRows && n >= 1 && n < (int64_t{1} << 34) && k >= 8 &&
         k % 8 == 0 && detail::aligned(w, 16) && detail::aligned(x, 16);
}

cudaError_t gemv_group(const GemvGroup& group, Dtype dtype, const float* x, int64_t m, int64_t k,
                       cudaStream_t stream) {
  if (group.count < 1 || group.count > kMaxGemvGroup) return cudaErrorInvalidValue;
  int64_t blocks = 0;
  for (int g = 0; g < group.count; ++g) {
    if (!gemv_supported(group.w[g], dtype, x, m, group.n[g], k)) return cudaErrorInvalidValue;
    blocks += (group.n[g] + kGemvWarps - 1) / kGemvWarps;
  }
  if (blocks > INT32_MAX) return cudaErrorInvalidValue;
  if (dtype == Dtype::kF16) return launch_rows<__half>(group, x, m, k, stream);
  return launch_rows<__nv_bfloat16>(group, x, m, k, stream);
}

cudaError_t gemv(const void* w, Dtype dtype, const float* x, int64_t m, int64_t n, int64_t k, float* out,
                 cudaStream_t stream) {
  GemvGroup group;
  group.count = 1;
  group.w[0] = w;
  group.out[0] = out;
  group.n[0] = n;
  return gemv_group(group, dtype, x, m, k, stream);
}

}  // namespace djinn::gpu
