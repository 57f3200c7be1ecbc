// Elementwise, row-wise and KV-append kernels of the CUDA backend (attention is in
// cuda_attention.cu). Contracts are in cuda_kernels.h. Memory-bound kernels take a
// 4-element vector path (16-byte f32 accesses, 8-byte 16-bit ones) when every pointer
// and row length allows it, else a scalar path with the same arithmetic.
#include <algorithm>
#include <atomic>
#include <cmath>
#include "djinn/backend/cuda/cuda_common.cuh"
#include "djinn/backend/cuda/cuda_kernels.h"

namespace djinn::gpu {

namespace {
std::atomic<bool> programmatic_launch_enabled{true};
}  // namespace
void set_programmatic_launch(bool enabled) { programmatic_launch_enabled.store(enabled); }
bool programmatic_launch() { return programmatic_launch_enabled.load(std::memory_order_relaxed); }

namespace {

using detail::aligned;
using detail::block_reduce;
using detail::grid_for;
using detail::load4;
using detail::MaxOp;
using detail::report_error;
using detail::store4;
using detail::SumOp;
using detail::to_f32;
using detail::with_dtype;

constexpr int kThreads = 256;  // elementwise and row kernels
// Norms and rope: one block per row, and in decode there are only a few rows, so a
// row's block is wide (a 5120-wide row is 1.25 float4 loads per thread, not 5).
constexpr int kRowThreads = 1024;

// Whether `p` of element type T may be read four elements at a time.
template <typename T>
bool vec4_aligned(const T* p) {
  return aligned(p, 4 * sizeof(T));
}

// ---------------------------------------------------------------------------------
// embedding
// ---------------------------------------------------------------------------------

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    embedding_kernel(const T* table, int64_t vocab, int64_t hidden, const int32_t* ids, float* out,
                     DeviceError* error) {
  detail::await_prior_grids();
  const int64_t row = blockIdx.x;
  const int32_t id = ids[row];
  if (id < 0 || id >= vocab) {
    if (threadIdx.x == 0) report_error(error, kEmbeddingIdOutOfRange, id, row, vocab);
    return;
  }
  const T* src = table + id * hidden;
  float* dst = out + row * hidden;
  if constexpr (kVec) {
    for (int64_t i = threadIdx.x; i < hidden / 4; i += blockDim.x) store4(dst + 4 * i, load4(src + 4 * i));
  } else {
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = to_f32(src[i]);
  }
}

// ---------------------------------------------------------------------------------
// f32 -> storage dtype
// ---------------------------------------------------------------------------------

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) convert_kernel(const float* src, T* dst, int64_t count) {
  detail::await_prior_grids();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (kVec) {
    for (int64_t i = first; i < count / 4; i += stride) store4(dst + 4 * i, load4(src + 4 * i));
  } else {
    for (int64_t i = first; i < count; i += stride) dst[i] = detail::from_f32<T>(src[i]);
  }
}

// ---------------------------------------------------------------------------------
// add / mul
// ---------------------------------------------------------------------------------

template <BinaryOp kOp>
__device__ __forceinline__ float apply(float a, float b) {
  if constexpr (kOp == BinaryOp::kAdd) return a + b;
  else return a * b;
}

// kVec: count and (with kBroadcast) cols are multiples of 4 and the pointers are
// 4-element aligned, so 4 consecutive elements share one b row.
template <BinaryOp kOp, typename TB, bool kVec, bool kBroadcast>
__global__ void __launch_bounds__(kThreads)
    binary_kernel(const float* a, const TB* b, float* out, int64_t count, int64_t cols) {
  detail::await_prior_grids();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (kVec) {
    for (int64_t v = first; v < count / 4; v += stride) {
      const int64_t i = 4 * v;
      const float4 x = load4(a + i);
      const float4 y = load4(b + (kBroadcast ? i % cols : i));
      store4(out + i, make_float4(apply<kOp>(x.x, y.x), apply<kOp>(x.y, y.y), apply<kOp>(x.z, y.z),
                                  apply<kOp>(x.w, y.w)));
    }
  } else {
    for (int64_t i = first; i < count; i += stride) out[i] = apply<kOp>(a[i], to_f32(b[kBroadcast ? i % cols : i]));
  }
}

template <BinaryOp kOp>
cudaError_t launch_binary(const float* a, const void* b, Dtype b_dtype, bool broadcast_b, int64_t rows, int64_t cols,
                          float* out, cudaStream_t stream) {
  const int64_t count = rows * cols;
  if (count == 0) return cudaSuccess;
  return with_dtype(b_dtype, [&](auto tag) {
    using TB = decltype(tag);
    const TB* pb = static_cast<const TB*>(b);
    const bool vec = count % 4 == 0 && (!broadcast_b || cols % 4 == 0) && vec4_aligned(a) && vec4_aligned(out) &&
                     vec4_aligned(pb);
    const unsigned grid = grid_for(vec ? count / 4 : count, kThreads);
    if (vec && broadcast_b) (void)detail::launch(binary_kernel<kOp, TB, true, true>, grid, kThreads, 0, stream, a, pb, out, count, cols);
    else if (vec) (void)detail::launch(binary_kernel<kOp, TB, true, false>, grid, kThreads, 0, stream, a, pb, out, count, cols);
    else if (broadcast_b) (void)detail::launch(binary_kernel<kOp, TB, false, true>, grid, kThreads, 0, stream, a, pb, out, count, cols);
    else (void)detail::launch(binary_kernel<kOp, TB, false, false>, grid, kThreads, 0, stream, a, pb, out, count, cols);
    return cudaGetLastError();
  });
}

// ---------------------------------------------------------------------------------
// gelu_new / silu
// ---------------------------------------------------------------------------------

template <UnaryOp kOp>
__device__ __forceinline__ float activate(float v) {
  if constexpr (kOp == UnaryOp::kGeluNew) {
    constexpr float kSqrt2OverPi = 0.7978845608028654f;
    const float u = kSqrt2OverPi * (v + 0.044715f * v * v * v);
    const float tanh_u = 1.0f - 2.0f / (expf(2.0f * u) + 1.0f);
    return 0.5f * v * (1.0f + tanh_u);
  } else {
    return v / (1.0f + expf(-v));
  }
}

template <UnaryOp kOp, bool kVec>
__global__ void __launch_bounds__(kThreads) unary_kernel(const float* x, float* out, int64_t count) {
  detail::await_prior_grids();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (kVec) {
    for (int64_t v = first; v < count / 4; v += stride) {
      const float4 in = load4(x + 4 * v);
      store4(out + 4 * v, make_float4(activate<kOp>(in.x), activate<kOp>(in.y), activate<kOp>(in.z),
                                      activate<kOp>(in.w)));
    }
  } else {
    for (int64_t i = first; i < count; i += stride) out[i] = activate<kOp>(x[i]);
  }
}

template <UnaryOp kOp>
cudaError_t launch_unary(const float* x, float* out, int64_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const bool vec = count % 4 == 0 && vec4_aligned(x) && vec4_aligned(out);
  const unsigned grid = grid_for(vec ? count / 4 : count, kThreads);
  if (vec) (void)detail::launch(unary_kernel<kOp, true>, grid, kThreads, 0, stream, x, out, count);
  else (void)detail::launch(unary_kernel<kOp, false>, grid, kThreads, 0, stream, x, out, count);
  return cudaGetLastError();
}

// out = silu(a) * b (silu_mul), as activate<kSilu> then one multiply.
template <bool kVec>
__global__ void __launch_bounds__(kThreads) silu_mul_kernel(const float* a, const float* b, float* out, int64_t count) {
  detail::await_prior_grids();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  constexpr auto silu = activate<UnaryOp::kSilu>;
  if constexpr (kVec) {
    for (int64_t v = first; v < count / 4; v += stride) {
      const float4 x = load4(a + 4 * v), y = load4(b + 4 * v);
      store4(out + 4 * v, make_float4(silu(x.x) * y.x, silu(x.y) * y.y, silu(x.z) * y.z, silu(x.w) * y.w));
    }
  } else {
    for (int64_t i = first; i < count; i += stride) out[i] = silu(a[i]) * b[i];
  }
}

// ---------------------------------------------------------------------------------
// layernorm / rmsnorm: one block per row; the row is read from L1/L2 on each pass
// ---------------------------------------------------------------------------------

// Sum over a row of f(x) for x in row[0, n), by this block.
template <bool kVec, typename F>
__device__ __forceinline__ float row_sum(const float* row, int64_t n, F f) {
  float s = 0.0f;
  if constexpr (kVec) {
    for (int64_t i = threadIdx.x; i < n / 4; i += blockDim.x) {
      const float4 v = load4(row + 4 * i);
      s += f(v.x) + f(v.y) + f(v.z) + f(v.w);
    }
  } else {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += f(row[i]);
  }
  return s;
}

// kVec: hidden % 4 == 0 and x, out, gamma, beta 4-element aligned.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kRowThreads)
    layernorm_kernel(const float* x, const T* gamma, const T* beta, float eps, int64_t hidden, float* out) {
  detail::await_prior_grids();
  __shared__ float scratch[32];
  const float* in = x + blockIdx.x * hidden;
  float* o = out + blockIdx.x * hidden;
  const float n = static_cast<float>(hidden);
  const float mean = block_reduce(row_sum<kVec>(in, hidden, [](float v) { return v; }), SumOp{}, 0.0f, scratch) / n;
  const float var =
      block_reduce(row_sum<kVec>(in, hidden, [mean](float v) { return (v - mean) * (v - mean); }), SumOp{}, 0.0f,
                   scratch) /
      n;
  const float inv = 1.0f / sqrtf(var + eps);
  if constexpr (kVec) {
    for (int64_t i = threadIdx.x; i < hidden / 4; i += blockDim.x) {
      const float4 v = load4(in + 4 * i), g = load4(gamma + 4 * i), b = load4(beta + 4 * i);
      store4(o + 4 * i, make_float4((v.x - mean) * inv * g.x + b.x, (v.y - mean) * inv * g.y + b.y,
                                    (v.z - mean) * inv * g.z + b.z, (v.w - mean) * inv * g.w + b.w));
    }
  } else {
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x)
      o[i] = (in[i] - mean) * inv * to_f32(gamma[i]) + to_f32(beta[i]);
  }
}

template <typename T, bool kVec>
__global__ void __launch_bounds__(kRowThreads)
    rmsnorm_kernel(const float* x, const T* gamma, float eps, int64_t hidden, float* out) {
  detail::await_prior_grids();
  __shared__ float scratch[32];
  const float* in = x + blockIdx.x * hidden;
  float* o = out + blockIdx.x * hidden;
  const float sum_sq = block_reduce(row_sum<kVec>(in, hidden, [](float v) { return v * v; }), SumOp{}, 0.0f, scratch);
  const float inv = 1.0f / sqrtf(sum_sq / static_cast<float>(hidden) + eps);
  if constexpr (kVec) {
    for (int64_t i = threadIdx.x; i < hidden / 4; i += blockDim.x) {
      const float4 v = load4(in + 4 * i), g = load4(gamma + 4 * i);
      store4(o + 4 * i, make_float4(g.x * (v.x * inv), g.y * (v.y * inv), g.z * (v.z * inv), g.w * (v.w * inv)));
    }
  } else {
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = to_f32(gamma[i]) * (in[i] * inv);
  }
}

// ---------------------------------------------------------------------------------
// softmax: one block per row; one pass for (max, sum) with online rescaling, one to write
// ---------------------------------------------------------------------------------

__global__ void __launch_bounds__(kThreads) softmax_kernel(const float* x, int64_t cols, float* out) {
  detail::await_prior_grids();
  __shared__ float scratch[32];
  const float* in = x + blockIdx.x * cols;
  float* o = out + blockIdx.x * cols;
  float m = -INFINITY, s = 0.0f;  // this thread's max and sum of exp(v - m)
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float v = in[i];
    if (v > m) {
      s = s * expf(m - v) + 1.0f;
      m = v;
    } else {
      s += expf(v - m);
    }
  }
  const float row_max = block_reduce(m, MaxOp{}, -INFINITY, scratch);
  const float mine = s == 0.0f ? 0.0f : s * expf(m - row_max);  // s == 0: no elements (m is -inf)
  const float inv = 1.0f / block_reduce(mine, SumOp{}, 0.0f, scratch);
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) o[i] = expf(in[i] - row_max) * inv;
}

// ---------------------------------------------------------------------------------
// argmax: one block per row, (value, index) pairs, ties to the lower index
// ---------------------------------------------------------------------------------

__device__ __forceinline__ void better_of(float& value, int32_t& index, float other_value, int32_t other_index) {
  if (other_value > value || (other_value == value && other_index < index)) {
    value = other_value;
    index = other_index;
  }
}

__global__ void __launch_bounds__(kRowThreads) argmax_kernel(const float* x, int64_t cols, int32_t* out) {
  detail::await_prior_grids();
  __shared__ float values[32];
  __shared__ int32_t indices[32];
  const float* in = x + blockIdx.x * cols;
  float best = -INFINITY;
  int32_t best_index = INT32_MAX;  // no element seen; loses every tie
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const float v = in[i];
    if (best_index == INT32_MAX || v > best) {  // indices rise: strictly greater keeps the first
      best = v;
      best_index = static_cast<int32_t>(i);
    }
  }
  for (int offset = 16; offset > 0; offset >>= 1)
    better_of(best, best_index, __shfl_xor_sync(detail::kFullMask, best, offset),
              __shfl_xor_sync(detail::kFullMask, best_index, offset));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    values[warp] = best;
    indices[warp] = best_index;
  }
  __syncthreads();
  if (warp == 0) {
    best = lane < blockDim.x / 32 ? values[lane] : -INFINITY;
    best_index = lane < blockDim.x / 32 ? indices[lane] : INT32_MAX;
    for (int offset = 16; offset > 0; offset >>= 1)
      better_of(best, best_index, __shfl_xor_sync(detail::kFullMask, best, offset),
                __shfl_xor_sync(detail::kFullMask, best_index, offset));
    if (lane == 0) out[blockIdx.x] = best_index;
  }
}

// ---------------------------------------------------------------------------------
// rope: one block per row; the row's cos / sin table in shared memory
// ---------------------------------------------------------------------------------

// The inverse frequencies of a head_dim up to 2 * kRopeTablePairs, computed on the host
// (double, as the CPU reference) and passed by value: computing them per block put a
// double-precision pow on every decode step's critical path, twice per layer.
constexpr int kRopeTablePairs = 128;
struct RopeTable {
  float inv_freq[kRopeTablePairs];
};

__global__ void __launch_bounds__(kRowThreads)
    rope_kernel(const float* x, const int32_t* positions, int64_t width, int64_t head_dim, float theta,
                const RopeTable given, bool use_given, float* out, DeviceError* error) {
  detail::await_prior_grids();
  extern __shared__ float table[];  // cos [half], then sin [half]
  const int64_t row = blockIdx.x, half = head_dim / 2;
  const int32_t pos = positions[row];
  if (pos < 0) {
    if (threadIdx.x == 0) report_error(error, kRopeNegativePosition, pos, row, 0);
    return;
  }
  float* cos_row = table;
  float* sin_row = table + half;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    // Same order of operations as the CPU (and Hugging Face): inverse frequency in
    // double, rounded to f32; the angle in f32; then cos / sin.
    const float inv_freq =
        use_given ? given.inv_freq[i]
                  : static_cast<float>(1.0 / pow(static_cast<double>(theta),
                                                 static_cast<double>(2 * i) / static_cast<double>(head_dim)));
    const float angle = static_cast<float>(pos) * inv_freq;
    cos_row[i] = cosf(angle);
    sin_row[i] = sinf(angle);
  }
  __syncthreads();
  const float* in = x + row * width;
  float* o = out + row * width;
  // 32-bit index arithmetic (width < 2^31, checked by the launcher): a 64-bit divide
  // per pair costs more than the pair's arithmetic.
  const auto half32 = static_cast<uint32_t>(half), dim32 = static_cast<uint32_t>(head_dim);
  for (uint32_t p = threadIdx.x; p < static_cast<uint32_t>(width / 2); p += blockDim.x) {
    const uint32_t head = p / half32, i = p - head * half32;
    const uint32_t a = head * dim32 + i, b = a + half32;
    const float x1 = in[a], x2 = in[b], c = cos_row[i], s = sin_row[i];
    o[a] = x1 * c - x2 * s;
    o[b] = x2 * c + x1 * s;
  }
}

// ---------------------------------------------------------------------------------
// slice
// ---------------------------------------------------------------------------------

// kVec: x_cols, start and length are multiples of 4 and x, out 16-byte aligned.
template <bool kVec>
__global__ void __launch_bounds__(kThreads)
    slice_kernel(const float* x, int64_t rows, int64_t x_cols, int64_t start, int64_t length, float* out) {
  detail::await_prior_grids();
  constexpr int kWidth = kVec ? 4 : 1;
  const int64_t per_row = length / kWidth, total = rows * per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t r = i / per_row, c = (i % per_row) * kWidth;
    if constexpr (kVec) store4(out + r * length + c, load4(x + r * x_cols + start + c));
    else out[r * length + c] = x[r * x_cols + start + c];
  }
}

// ---------------------------------------------------------------------------------
// kv_append: one block per new row
// ---------------------------------------------------------------------------------

// The caches of one batched launch, by value in the kernel's parameters.
struct CacheTable {
  void* rows[kMaxSessionsPerLaunch];
};

// kBatched: row r goes to table.rows[r] at positions[r]; else to `cache` at
// positions[r], which must equal positions[0] + r. `row_offset` numbers the rows in
// error reports (a batched launch covers rows [row_offset, row_offset + gridDim.x)).
// kVec: width and both row strides are multiples of 4 and every pointer (the caches
// too) is 4-element aligned.
template <typename T, bool kVec, bool kBatched>
__global__ void __launch_bounds__(kThreads)
    kv_append_kernel(T* cache, const CacheTable table, int64_t row_offset, int64_t capacity, int64_t width,
                     int64_t row_stride, const float* fresh, int64_t fresh_stride, const int32_t* positions,
                     DeviceError* error) {
  detail::await_prior_grids();
  const int64_t row = blockIdx.x;
  const int32_t pos = positions[row];
  if (pos < 0 || pos >= capacity) {
    if (threadIdx.x == 0) report_error(error, kKvAppendPositionOutOfRange, pos, row_offset + row, capacity);
    return;
  }
  if (!kBatched && row > 0 && pos != static_cast<int64_t>(positions[0]) + row) {
    if (threadIdx.x == 0) report_error(error, kKvAppendNotConsecutive, pos, row, positions[row - 1]);
    return;
  }
  T* dst = (kBatched ? static_cast<T*>(table.rows[row]) : cache) + pos * row_stride;
  const float* src = fresh + row * fresh_stride;
  if constexpr (kVec) {
    for (int64_t i = threadIdx.x; i < width / 4; i += blockDim.x) store4(dst + 4 * i, load4(src + 4 * i));
  } else {
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x) dst[i] = detail::from_f32<T>(src[i]);
  }
}

// One launch per kMaxSessionsPerLaunch rows when batched (`caches` is a host array),
// one launch for all rows otherwise.
template <bool kBatched>
cudaError_t launch_kv_append(void* cache, void* const* caches, const KvCacheLayout& layout, const float* fresh,
                             int64_t fresh_stride, int64_t rows, const int32_t* positions, DeviceError* error,
                             cudaStream_t stream) {
  if (rows == 0 || layout.width == 0) return cudaSuccess;
  return with_dtype(layout.dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool dense_vec = layout.width % 4 == 0 && layout.row_stride % 4 == 0 && fresh_stride % 4 == 0 &&
                           vec4_aligned(fresh);
    const int64_t per_launch = kBatched ? kMaxSessionsPerLaunch : rows;
    for (int64_t first = 0; first < rows; first += per_launch) {
      const int64_t n = rows - first < per_launch ? rows - first : per_launch;
      CacheTable table{};
      bool vec = dense_vec;
      if constexpr (kBatched) {
        for (int64_t b = 0; b < n; ++b) {
          table.rows[b] = caches[first + b];
          vec = vec && vec4_aligned(static_cast<const T*>(table.rows[b]));
        }
      } else {
        vec = vec && vec4_aligned(static_cast<const T*>(cache));
      }
      const auto kernel = vec ? kv_append_kernel<T, true, kBatched> : kv_append_kernel<T, false, kBatched>;
      (void)detail::launch(kernel, static_cast<unsigned>(n), kThreads, 0, stream, static_cast<T*>(cache), table, first, layout.capacity,
                                                               layout.width, layout.row_stride,
                                                               fresh + first * fresh_stride, fresh_stride,
                                                               positions + first, error);
      const cudaError_t status = cudaGetLastError();
      if (status != cudaSuccess) return status;
    }
    return cudaSuccess;
  });
}

}  // namespace

// ---------------------------------------------------------------------------------
// Launchers
// ---------------------------------------------------------------------------------

cudaError_t embedding(const void* table, Dtype dtype, int64_t vocab, int64_t hidden, const int32_t* ids,
                      int64_t rows, float* out, DeviceError* error, cudaStream_t stream) {
  if (rows == 0 || hidden == 0) return cudaSuccess;
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* t = static_cast<const T*>(table);
    const bool vec = hidden % 4 == 0 && vec4_aligned(t) && vec4_aligned(out);
    const auto kernel = vec ? embedding_kernel<T, true> : embedding_kernel<T, false>;
    (void)detail::launch(kernel, static_cast<unsigned>(rows), kThreads, 0, stream, t, vocab, hidden, ids, out, error);
    return cudaGetLastError();
  });
}

cudaError_t convert_from_f32(const float* src, void* dst, Dtype dtype, int64_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* d = static_cast<T*>(dst);
    const bool vec = count % 4 == 0 && vec4_aligned(src) && vec4_aligned(d);
    const unsigned grid = grid_for(vec ? count / 4 : count, kThreads);
    if (vec) (void)detail::launch(convert_kernel<T, true>, grid, kThreads, 0, stream, src, d, count);
    else (void)detail::launch(convert_kernel<T, false>, grid, kThreads, 0, stream, src, d, count);
    return cudaGetLastError();
  });
}

cudaError_t binary(BinaryOp op, const float* a, const void* b, Dtype b_dtype, bool broadcast_b, int64_t rows,
                   int64_t cols, float* out, cudaStream_t stream) {
  if (op == BinaryOp::kAdd) return launch_binary<BinaryOp::kAdd>(a, b, b_dtype, broadcast_b, rows, cols, out, stream);
  return launch_binary<BinaryOp::kMul>(a, b, b_dtype, broadcast_b, rows, cols, out, stream);
}

cudaError_t unary(UnaryOp op, const float* x, float* out, int64_t count, cudaStream_t stream) {
  if (op == UnaryOp::kGeluNew) return launch_unary<UnaryOp::kGeluNew>(x, out, count, stream);
  return launch_unary<UnaryOp::kSilu>(x, out, count, stream);
}

cudaError_t silu_mul(const float* a, const float* b, float* out, int64_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const bool vec = count % 4 == 0 && vec4_aligned(a) && vec4_aligned(b) && vec4_aligned(out);
  const unsigned grid = grid_for(vec ? count / 4 : count, kThreads);
  if (vec) (void)detail::launch(silu_mul_kernel<true>, grid, kThreads, 0, stream, a, b, out, count);
  else (void)detail::launch(silu_mul_kernel<false>, grid, kThreads, 0, stream, a, b, out, count);
  return cudaGetLastError();
}

cudaError_t layernorm(const float* x, const void* gamma, const void* beta, Dtype param_dtype, float eps, int64_t rows,
                      int64_t hidden, float* out, cudaStream_t stream) {
  if (rows == 0 || hidden == 0) return cudaSuccess;
  return with_dtype(param_dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* g = static_cast<const T*>(gamma);
    const T* b = static_cast<const T*>(beta);
    const bool vec = hidden % 4 == 0 && vec4_aligned(x) && vec4_aligned(out) && vec4_aligned(g) && vec4_aligned(b);
    const auto kernel = vec ? layernorm_kernel<T, true> : layernorm_kernel<T, false>;
    (void)detail::launch(kernel, static_cast<unsigned>(rows), kRowThreads, 0, stream, x, g, b, eps, hidden, out);
    return cudaGetLastError();
  });
}

cudaError_t rmsnorm(const float* x, const void* gamma, Dtype gamma_dtype, float eps, int64_t rows, int64_t hidden,
                    float* out, cudaStream_t stream) {
  if (rows == 0 || hidden == 0) return cudaSuccess;
  return with_dtype(gamma_dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* g = static_cast<const T*>(gamma);
    const bool vec = hidden % 4 == 0 && vec4_aligned(x) && vec4_aligned(out) && vec4_aligned(g);
    const auto kernel = vec ? rmsnorm_kernel<T, true> : rmsnorm_kernel<T, false>;
    (void)detail::launch(kernel, static_cast<unsigned>(rows), kRowThreads, 0, stream, x, g, eps, hidden, out);
    return cudaGetLastError();
  });
}

cudaError_t softmax(const float* x, int64_t rows, int64_t cols, float* out, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return cudaSuccess;
  (void)detail::launch(softmax_kernel, static_cast<unsigned>(rows), kThreads, 0, stream, x, cols, out);
  return cudaGetLastError();
}

cudaError_t argmax(const float* x, int64_t rows, int64_t cols, int32_t* out, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  // A row per block, as wide as a block goes: a decode step's one row of 32000 logits
  // took ~26 us with 256 threads.
  (void)detail::launch(argmax_kernel, static_cast<unsigned>(rows), kRowThreads, 0, stream, x, cols, out);
  return cudaGetLastError();
}

cudaError_t rope(const float* x, const int32_t* positions, int64_t rows, int64_t width, int64_t head_dim, float theta,
                 float* out, DeviceError* error, cudaStream_t stream) {
  if (rows == 0 || width == 0) return cudaSuccess;
  if (head_dim < 2 || head_dim % 2 != 0 || head_dim > kMaxRopeHeadDim || width % head_dim != 0 || width >= (int64_t{1} << 31))
    return cudaErrorInvalidValue;
  const size_t shared = static_cast<size_t>(head_dim) * sizeof(float);  // cos and sin, head_dim / 2 each
  // The table of the last (head_dim, theta) this thread asked for (every layer of a
  // model asks the same).
  thread_local int64_t table_head_dim = 0;
  thread_local float table_theta = 0.0f;
  thread_local RopeTable table{};
  const bool use_table = head_dim / 2 <= kRopeTablePairs;
  if (use_table && (table_head_dim != head_dim || table_theta != theta)) {
    for (int64_t i = 0; i < head_dim / 2; ++i)
      table.inv_freq[i] = static_cast<float>(
          1.0 / std::pow(static_cast<double>(theta), static_cast<double>(2 * i) / static_cast<double>(head_dim)));
    table_head_dim = head_dim;
    table_theta = theta;
  }
  (void)detail::launch(rope_kernel, static_cast<unsigned>(rows), kRowThreads, shared, stream, x, positions, width,
                       head_dim, theta, table, use_table, out, error);
  return cudaGetLastError();
}

cudaError_t slice(const float* x, int64_t rows, int64_t x_cols, int64_t start, int64_t length, float* out,
                  cudaStream_t stream) {
  if (rows == 0 || length == 0) return cudaSuccess;
  const bool vec = x_cols % 4 == 0 && start % 4 == 0 && length % 4 == 0 && vec4_aligned(x) && vec4_aligned(out);
  const unsigned grid = grid_for(rows * (vec ? length / 4 : length), kThreads);
  if (vec) (void)detail::launch(slice_kernel<true>, grid, kThreads, 0, stream, x, rows, x_cols, start, length, out);
  else (void)detail::launch(slice_kernel<false>, grid, kThreads, 0, stream, x, rows, x_cols, start, length, out);
  return cudaGetLastError();
}

cudaError_t kv_append(void* cache, const KvCacheLayout& layout, const float* fresh, int64_t fresh_stride, int64_t seq,
                      const int32_t* positions, DeviceError* error, cudaStream_t stream) {
  return launch_kv_append<false>(cache, nullptr, layout, fresh, fresh_stride, seq, positions, error, stream);
}

cudaError_t kv_append_batched(void* const* caches, const KvCacheLayout& layout, const float* fresh,
                              int64_t fresh_stride, int64_t batch, const int32_t* positions, DeviceError* error,
                              cudaStream_t stream) {
  return launch_kv_append<true>(nullptr, caches, layout, fresh, fresh_stride, batch, positions, error, stream);
}

// ---- span copies -------------------------------------------------------------------

// blockIdx.y: the span; blocks along x stride over it in 16-byte words, so that many
// loads and stores are in flight at once (what keeps PCIe busy without a copy engine).
__global__ void copy_spans_kernel(const SpanCopyTable table) {
  detail::await_prior_grids();
  const SpanCopy span = table.spans[blockIdx.y];
  const auto* src = static_cast<const uint4*>(span.src);
  auto* dst = static_cast<uint4*>(span.dst);
  const uint64_t words = span.bytes / sizeof(uint4);
  for (uint64_t i = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x; i < words; i += uint64_t{gridDim.x} * blockDim.x)
    dst[i] = src[i];
}

cudaError_t copy_spans(const SpanCopyTable& table, cudaStream_t stream) {
  if (table.count <= 0) return cudaSuccess;
  if (table.count > kMaxSpanCopies) return cudaErrorInvalidValue;
  uint64_t largest = 0;
  for (int i = 0; i < table.count; ++i) largest = table.spans[i].bytes > largest ? table.spans[i].bytes : largest;
  // One 16-byte word per thread (as many PCIe transactions in flight as can be), at
  // most 1024 blocks per span.
  const uint64_t words = largest / sizeof(uint4);
  const unsigned blocks = static_cast<unsigned>(std::min<uint64_t>(1024, std::max<uint64_t>(1, (words + kThreads - 1) / kThreads)));
  (void)detail::launch(copy_spans_kernel, dim3(blocks, static_cast<unsigned>(table.count)), kThreads, 0, stream, table);
  return cudaGetLastError();
}

bool kernels_await_prior_grids() {
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  cudaFuncAttributes attributes{};
  if (cudaFuncGetAttributes(&attributes, argmax_kernel) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return major >= 9 && attributes.ptxVersion >= 90;
}

}  // namespace djinn::gpu
