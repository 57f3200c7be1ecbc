// Decode GEMV: the products of a decode step with 16-bit nn.Linear weights. Contract in
// cuda_kernels.h (gemv).
//
// Why not cuBLAS: at one to four activation rows the product is a stream over the
// weight, and its speed is how many weight bytes are in flight. With cuBLASLt's best
// algorithms for M = 1 a Llama-2-13B decode step took 9.5-9.8 ms on an H200, with this
// kernel 8.8 (same runs). Each lane issues its 16-byte weight loads in rounds of eight
// (4: 9.02 ms, 16: 9.62; one row: 9 or 10, see gemv_kernel), with loads that leave L1
// to x. It reads x as f32 and rounds it to the weight's dtype in registers, so the
// narrowing kernel before each GEMM goes too, and it adds a residual as it writes
// (matmul_add), so the add kernel after an output projection goes as well.
//
// Also measured and dropped (same runs each): on an H200, prefetching the first weights
// into L2 before the wait for the kernel before, 9.09 vs 8.89 ms; launching the products
// of one x together, q / k / v and gate / up, 9.09 vs 9.12. On an H100, a variant that
// loaded its first round into registers before that wait, 12.14 vs 12.23 ms without
// (not worth its registers); four warps per column, each with every fourth chunk,
// summed in shared memory, were 6-16 % faster per product launched back to back in
// isolation, yet the decode step went from 11.03 to 11.67 ms.
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
constexpr int kUnroll = 8;     // 16-byte weight loads a lane issues per round (but see gemv_kernel)

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

// out[r, col] = sum_j round(x[r, j]) * w[col, j]: warp `col` reads weight row col in
// 8-element chunks, lane l taking chunks l, l + 32, ...; the partial sums meet in a
// warp reduction, plus residual[r, col] when there is one.
//
// A lane reads its chunks in rounds of U loads, then one at a time for what is left.
// ptxas keeps the kernel at 32 registers (one row), so fewer than U loads are really in
// flight at once; what counts is that a row ends in whole rounds: Llama-2-13B's rows are
// 20 chunks a lane (5120 columns: U = 10) and 54 (13824: U = 9), and with U = 8 their
// tails of 4 and 6 single loads took the decode step from 10.71 to 10.84 ms (H100, same
// run). Forcing more registers to keep every load in flight (__launch_bounds__ with 4 or
// 1 blocks an SM) was slower: 10.96-11.79 ms.
template <typename T, int M, int U>
__global__ void __launch_bounds__(kGemvThreads)
    gemv_kernel(const T* __restrict__ w, const float* __restrict__ x, int64_t n, int64_t k,
                const float* __restrict__ residual, float* __restrict__ out) {
  detail::await_prior_grids();
  const int lane = threadIdx.x % 32;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kGemvWarps + threadIdx.x / 32;
  if (col >= n) return;
  const auto* row = reinterpret_cast<const uint4*>(w + col * k);
  const int64_t chunks = k / 8;
  float acc[M] = {};
  int64_t c = lane;
  for (; c + (U - 1) * 32 < chunks; c += U * 32) {
    uint4 w8[U];
#pragma unroll
    for (int u = 0; u < U; ++u) w8[u] = load_streaming(row + c + u * 32);
#pragma unroll
    for (int u = 0; u < U; ++u) accumulate<T, M>(w8[u], x, k, (c + u * 32) * 8, acc);
  }
  for (; c < chunks; c += 32) accumulate<T, M>(load_streaming(row + c), x, k, c * 8, acc);
#pragma unroll
  for (int r = 0; r < M; ++r) {
    const float sum = warp_reduce(acc[r], SumOp{});
    if (lane == 0) out[r * n + col] = residual != nullptr ? sum + residual[r * n + col] : sum;
  }
}

template <typename T, int M, int U>
cudaError_t launch(const void* w, const float* x, int64_t n, int64_t k, const float* residual, float* out,
                   cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>((n + kGemvWarps - 1) / kGemvWarps);
  (void)detail::launch(gemv_kernel<T, M, U>, blocks, kGemvThreads, 0, stream, static_cast<const T*>(w), x, n, k,
                       residual, out);
  return cudaGetLastError();  // and clears it, as every launcher does
}

// One row: rounds of 10 or 9 loads where a lane's chunks are a whole number of them
// (see gemv_kernel). More rows keep 8 (at 4 rows, 9 or 10 spill registers).
template <typename T>
cudaError_t launch_one_row(const void* w, const float* x, int64_t n, int64_t k, const float* residual, float* out,
                           cudaStream_t stream) {
  const int64_t chunks = k / 8;  // a lane's share is chunks / 32: whole rounds of U when 32 * U divides it
  if (chunks % (32 * 10) == 0) return launch<T, 1, 10>(w, x, n, k, residual, out, stream);
  if (chunks % (32 * 9) == 0) return launch<T, 1, 9>(w, x, n, k, residual, out, stream);
  return launch<T, 1, kUnroll>(w, x, n, k, residual, out, stream);
}

template <typename T>
cudaError_t launch_rows(const void* w, const float* x, int64_t m, int64_t n, int64_t k, const float* residual,
                        float* out, cudaStream_t stream) {
  switch (m) {
    case 1: return launch_one_row<T>(w, x, n, k, residual, out, stream);
    case 2: return launch<T, 2, kUnroll>(w, x, n, k, residual, out, stream);
    case 3: return launch<T, 3, kUnroll>(w, x, n, k, residual, out, stream);
    case 4: return launch<T, 4, kUnroll>(w, x, n, k, residual, out, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool gemv_supported(const void* w, Dtype dtype, const float* x, int64_t m, int64_t n, int64_t k) {
  return dtype != Dtype::kF32 && m >= 1 && m <= kMaxGemvRows && n >= 1 && n < (int64_t{1} << 31) && k >= 8 &&
         k % 8 == 0 && detail::aligned(w, 16) && detail::aligned(x, 16);
}

cudaError_t gemv(const void* w, Dtype dtype, const float* x, int64_t m, int64_t n, int64_t k, const float* residual,
                 float* out, cudaStream_t stream) {
  if (!gemv_supported(w, dtype, x, m, n, k)) return cudaErrorInvalidValue;
  if (dtype == Dtype::kF16) return launch_rows<__half>(w, x, m, n, k, residual, out, stream);
  return launch_rows<__nv_bfloat16>(w, x, m, n, k, residual, out, stream);
}

}  // namespace djinn::gpu
