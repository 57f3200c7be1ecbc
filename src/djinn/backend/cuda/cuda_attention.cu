// Attention kernels of the CUDA backend (contracts in cuda_kernels.h):
//
//  - attention_decode_kernel: split-K ("flash-decoding") over the keys of one query
//    row, exact f32 math on widened K / V. Serves decode (one or a few rows per
//    session), batched decode across sessions, and every prefill the tensor-core
//    kernel does not cover (f32 caches, odd head sizes).
//  - attention_combine_kernel: merges the key chunks' partial (max, sum, weighted V).
//  - flash_prefill_kernel: flash attention for a whole prompt over 16-bit caches on
//    tensor cores (mma.sync m16n8k16, f32 accumulation), with cp.async tile loads.
#include <type_traits>

#include "djinn/backend/cuda/cuda_common.cuh"
#include "djinn/backend/cuda/cuda_kernels.h"

namespace djinn::gpu {
namespace {

using detail::aligned;
using detail::block_reduce;
using detail::kFullMask;
using detail::MaxOp;
using detail::report_error;
using detail::SumOp;
using detail::to_f32;

// =================================================================================
// Split-K decode
// =================================================================================
//
// Block (unit, chunk), unit = (row, QH consecutive query heads of one kv head): 128
// threads cut into groups of G lanes (G a power of two <= 32); a group reads one key
// (and value) row at a time, each lane VEC elements per load (16 bytes when aligned,
// else one element), NPL loads per lane per row. Each step, every group issues the
// K and V loads of its U keys at once (2 * U * NPL independent loads per lane), then
// computes their scores (shuffles within the group), and folds them into its own
// online softmax (max, sum, weighted V in registers) for each of the QH query heads:
// the key loop has no block barrier and reads each K / V row once for all QH heads.
// At the end the groups' states merge, by shuffles within a warp and through shared
// memory across the warps, into either the normalised output (one chunk) or the
// chunk's (max, sum, weighted V) partial for the combine kernel.

constexpr int kDecodeThreads = 128;
constexpr int kDecodeWarps = kDecodeThreads / 32;
constexpr int kDecodeUnroll = 4;         // keys per group per step (16-byte loads)
constexpr int kDecodeBlocksPerSm = 128;  // split the keys until a full cache gives this many blocks per SM
constexpr int kDecodeMinChunk = 128;     // keys
constexpr int kDecodeMaxHeadsPerBlock = 4;

struct DecodeParams {
  const float* q;
  int64_t q_stride;
  const void* k_cache;  // one sequence (batched launches read KvTable instead)
  const void* v_cache;
  int64_t row_offset;   // rows of this launch are rows [row_offset, ...) in error reports
  int64_t capacity;
  int64_t kv_stride;  // cache row stride, elements
  const int32_t* positions;
  int n_heads;
  int units_per_row;  // n_heads / QH
  int group;          // query heads per kv head
  int head_dim;
  float scale;
  int lanes_per_key;  // G
  int chunk_len;      // keys per chunk
  int num_chunks;     // 1: write `out` directly
  float* out;
  int64_t out_stride;
  float* partial_acc;  // [rows * n_heads][num_chunks][head_dim]
  float* partial_ml;   // [rows * n_heads][num_chunks][2]: max, sum
  DeviceError* error;
};

// The caches of one batched launch (row b: k[b], v[b]), by value in the parameters.
struct KvTable {
  const void* k[kMaxSessionsPerLaunch];
  const void* v[kMaxSessionsPerLaunch];
};

// The raw bits of one load: 16 bytes, or one element.
template <typename T, int VEC>
using RawLoad = std::conditional_t<VEC * sizeof(T) == 16, uint4, T>;

template <typename T, int VEC>
__device__ __forceinline__ RawLoad<T, VEC> load_raw(const T* p) {
  if constexpr (VEC * sizeof(T) == 16) {
    return __ldg(reinterpret_cast<const uint4*>(p));
  } else {
    return *p;
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void widen(const RawLoad<T, VEC>& raw, float (&f)[VEC]) {
  if constexpr (VEC == 1) {
    f[0] = to_f32(raw);
  } else if constexpr (std::is_same_v<T, float>) {
    f[0] = __uint_as_float(raw.x);
    f[1] = __uint_as_float(raw.y);
    f[2] = __uint_as_float(raw.z);
    f[3] = __uint_as_float(raw.w);
  } else {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 two = detail::unpack2(words[i], T{});
      f[2 * i] = two.x;
      f[2 * i + 1] = two.y;
    }
  }
}

// exp(a - b) for a softmax state's max `a` against a larger max `b` (finite); 0 when
// `a` is -inf (an empty state).
__device__ __forceinline__ float rescale_factor(float a, float b) { return a == -INFINITY ? 0.0f : expf(a - b); }

template <typename T, int VEC, int NPL, int QH, bool kBatched>
__global__ void __launch_bounds__(kDecodeThreads) attention_decode_kernel(const DecodeParams p, const KvTable table) {
  detail::await_prior_grids();
  using Raw = RawLoad<T, VEC>;
  constexpr int U = VEC == 1 ? 2 : kDecodeUnroll;  // one-element loads: NPL of them per key already
  constexpr int kSlice = NPL * VEC;                // elements of a row per lane (>= head_dim / G)
  __shared__ float warp_acc[kDecodeWarps][QH][32 * kSlice];  // [warp][head][head_dim]
  __shared__ float warp_ml[kDecodeWarps][QH][2];

  const int row = blockIdx.x / p.units_per_row, unit = blockIdx.x % p.units_per_row, chunk = blockIdx.y;
  const int head0 = unit * QH;  // first query head of this block
  const int32_t pos = p.positions[row];
  const bool reporter = threadIdx.x == 0 && unit == 0 && chunk == 0;  // one block per row reports
  if (pos < 0 || pos >= p.capacity) {
    if (reporter) report_error(p.error, kAttentionPositionOutOfRange, pos, p.row_offset + row, p.capacity);
    return;
  }
  if (!kBatched && reporter && row > 0 && pos != static_cast<int64_t>(p.positions[0]) + row)
    report_error(p.error, kAttentionNotConsecutive, pos, row, p.positions[row - 1]);
  const int key_begin = chunk * p.chunk_len;
  const int visible = pos + 1;  // causal: keys [0, pos]
  if (key_begin >= visible) return;
  const int key_end = min(visible, key_begin + p.chunk_len);

  const int G = p.lanes_per_key, lane = threadIdx.x & (G - 1), grp = threadIdx.x / G;
  const int n_groups = kDecodeThreads / G, nvec = p.head_dim / VEC;
  const int64_t kv_offset = static_cast<int64_t>(head0 / p.group) * p.head_dim;
  const T* k_base = static_cast<const T*>(kBatched ? table.k[row] : p.k_cache) + kv_offset;
  const T* v_base = static_cast<const T*>(kBatched ? table.v[row] : p.v_cache) + kv_offset;

  float qv[QH][NPL][VEC], acc[QH][NPL][VEC], m[QH], l[QH];
#pragma unroll
  for (int h = 0; h < QH; ++h) {
    const float* q_row = p.q + row * p.q_stride + static_cast<int64_t>(head0 + h) * p.head_dim;
    m[h] = -INFINITY;  // this group's running max and sum (every lane of the group holds them)
    l[h] = 0.0f;
#pragma unroll
    for (int v = 0; v < NPL; ++v) {
      const int j = lane + v * G;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        qv[h][v][e] = j < nvec ? q_row[j * VEC + e] : 0.0f;
        acc[h][v][e] = 0.0f;
      }
    }
  }

  // The bounds are block-uniform, so every lane reaches the shuffles.
  for (int base = key_begin; base < key_end; base += n_groups * U) {
    Raw kr[U][NPL], vr[U][NPL];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int key = base + u * n_groups + grp;
      const int64_t offset = static_cast<int64_t>(key) * p.kv_stride;
#pragma unroll
      for (int v = 0; v < NPL; ++v) {
        const int j = lane + v * G;
        const bool ok = key < key_end && j < nvec;
        kr[u][v] = ok ? load_raw<T, VEC>(k_base + offset + j * VEC) : Raw{};
        vr[u][v] = ok ? load_raw<T, VEC>(v_base + offset + j * VEC) : Raw{};
      }
    }
    float s[QH][U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float dot[QH];
#pragma unroll
      for (int h = 0; h < QH; ++h) dot[h] = 0.0f;
#pragma unroll
      for (int v = 0; v < NPL; ++v) {
        float f[VEC];
        widen<T, VEC>(kr[u][v], f);
#pragma unroll
        for (int h = 0; h < QH; ++h)
#pragma unroll
          for (int e = 0; e < VEC; ++e) dot[h] += qv[h][v][e] * f[e];
      }
      const bool valid = base + u * n_groups + grp < key_end;
#pragma unroll
      for (int h = 0; h < QH; ++h) {
        for (int offset = G / 2; offset > 0; offset >>= 1) dot[h] += __shfl_xor_sync(kFullMask, dot[h], offset);
        s[h][u] = valid ? dot[h] * p.scale : -INFINITY;
      }
    }
#pragma unroll
    for (int h = 0; h < QH; ++h) {
      float step_max = s[h][0];
#pragma unroll
      for (int u = 1; u < U; ++u) step_max = fmaxf(step_max, s[h][u]);
      const float new_max = fmaxf(m[h], step_max);
      if (new_max == -INFINITY) continue;  // no key of this group yet (group-uniform)
      const float rescale = rescale_factor(m[h], new_max);
      m[h] = new_max;
      l[h] *= rescale;
#pragma unroll
      for (int v = 0; v < NPL; ++v)
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[h][v][e] *= rescale;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        s[h][u] = expf(s[h][u] - new_max);  // 0 for keys past the chunk
        l[h] += s[h][u];
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (base + u * n_groups + grp >= key_end) continue;  // never multiply what was not read
#pragma unroll
      for (int v = 0; v < NPL; ++v) {
        float f[VEC];
        widen<T, VEC>(vr[u][v], f);
#pragma unroll
        for (int h = 0; h < QH; ++h)
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[h][v][e] += s[h][u] * f[e];
      }
    }
  }

  // Merge the groups of each warp (lanes G apart), then the warps through shared memory.
  for (int offset = G; offset < 32; offset <<= 1) {
#pragma unroll
    for (int h = 0; h < QH; ++h) {
      const float m_other = __shfl_xor_sync(kFullMask, m[h], offset);
      const float l_other = __shfl_xor_sync(kFullMask, l[h], offset);
      const float new_max = fmaxf(m[h], m_other);
      const float mine = new_max == -INFINITY ? 0.0f : rescale_factor(m[h], new_max);
      const float theirs = new_max == -INFINITY ? 0.0f : rescale_factor(m_other, new_max);
      m[h] = new_max;
      l[h] = l[h] * mine + l_other * theirs;
#pragma unroll
      for (int v = 0; v < NPL; ++v)
#pragma unroll
        for (int e = 0; e < VEC; ++e)
          acc[h][v][e] = acc[h][v][e] * mine + __shfl_xor_sync(kFullMask, acc[h][v][e], offset) * theirs;
    }
  }
  const int warp = threadIdx.x / 32;
  if (threadIdx.x % 32 < G) {  // the warp's first group holds the merged state
#pragma unroll
    for (int h = 0; h < QH; ++h) {
#pragma unroll
      for (int v = 0; v < NPL; ++v) {
        const int j = lane + v * G;
        if (j < nvec)
#pragma unroll
          for (int e = 0; e < VEC; ++e) warp_acc[warp][h][j * VEC + e] = acc[h][v][e];
      }
      if (lane == 0) {
        warp_ml[warp][h][0] = m[h];
        warp_ml[warp][h][1] = l[h];
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < QH * p.head_dim; i += kDecodeThreads) {
    const int h = i / p.head_dim, d = i % p.head_dim;
    float max_all = -INFINITY;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) max_all = fmaxf(max_all, warp_ml[w][h][0]);  // finite: >= 1 key
    float total = 0.0f, sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kDecodeWarps; ++w) {
      const float weight = rescale_factor(warp_ml[w][h][0], max_all);
      total += weight * warp_acc[w][h][d];
      sum += weight * warp_ml[w][h][1];
    }
    const int head = head0 + h;
    if (p.num_chunks == 1) {
      p.out[row * p.out_stride + static_cast<int64_t>(head) * p.head_dim + d] = total / sum;
    } else {
      const int64_t slot = (static_cast<int64_t>(row) * p.n_heads + head) * p.num_chunks + chunk;
      p.partial_acc[slot * p.head_dim + d] = total;
      if (d == 0) {
        p.partial_ml[2 * slot] = max_all;
        p.partial_ml[2 * slot + 1] = sum;
      }
    }
  }
}

// One block per (row, head): out = sum_c w_c acc_c / sum_c w_c sum_c, w_c = exp(max_c - max).
__global__ void __launch_bounds__(kDecodeThreads) attention_combine_kernel(const DecodeParams p) {
  detail::await_prior_grids();
  __shared__ float weight[kMaxDecodeChunks];
  __shared__ float denominator;
  const int row = blockIdx.x / p.n_heads, head = blockIdx.x % p.n_heads;
  const int32_t pos = p.positions[row];
  if (pos < 0 || pos >= p.capacity) return;  // reported by the decode kernel
  const int active = pos / p.chunk_len + 1;  // chunks holding keys [0, pos]
  const float* ml = p.partial_ml + static_cast<int64_t>(blockIdx.x) * p.num_chunks * 2;
  const float* acc = p.partial_acc + static_cast<int64_t>(blockIdx.x) * p.num_chunks * p.head_dim;
  if (threadIdx.x < 32) {  // kMaxDecodeChunks <= 64: two chunks a lane
    const int c0 = threadIdx.x, c1 = threadIdx.x + 32;
    const float m0 = c0 < active ? ml[2 * c0] : -INFINITY, m1 = c1 < active ? ml[2 * c1] : -INFINITY;
    const float max_all = detail::warp_reduce(fmaxf(m0, m1), MaxOp{});  // finite: chunk 0 is active
    const float w0 = c0 < active ? expf(m0 - max_all) : 0.0f, w1 = c1 < active ? expf(m1 - max_all) : 0.0f;
    if (c0 < kMaxDecodeChunks) weight[c0] = w0;
    if (c1 < kMaxDecodeChunks) weight[c1] = w1;
    const float den = detail::warp_reduce((c0 < active ? w0 * ml[2 * c0 + 1] : 0.0f) +
                                              (c1 < active ? w1 * ml[2 * c1 + 1] : 0.0f),
                                          SumOp{});
    if (threadIdx.x == 0) denominator = den;
  }
  __syncthreads();
  constexpr int kBatch = 16;  // partial loads in flight per thread
  for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
    float numerator = 0.0f;
    for (int c0 = 0; c0 < active; c0 += kBatch) {
      float part[kBatch];
#pragma unroll
      for (int i = 0; i < kBatch; ++i) part[i] = c0 + i < active ? acc[(c0 + i) * p.head_dim + d] : 0.0f;
#pragma unroll
      for (int i = 0; i < kBatch; ++i)
        if (c0 + i < active) numerator += weight[c0 + i] * part[i];
    }
    p.out[row * p.out_stride + static_cast<int64_t>(head) * p.head_dim + d] = numerator / denominator;
  }
}
static_assert(kMaxDecodeChunks <= 64, "the combine kernel weighs two chunks per lane of one warp");

// Query heads per block: the largest of 4, 2, 1 dividing the GQA group.
int heads_per_block(const AttentionShape& shape) {
  const int64_t group = shape.n_kv_heads >= 1 ? shape.n_heads / shape.n_kv_heads : 1;
  for (int qh = kDecodeMaxHeadsPerBlock; qh > 1; qh /= 2)
    if (group % qh == 0) return qh;
  return 1;
}

// How a decode launch cuts its work; a pure function of the launch's shapes, so that
// attention_decode_workspace_bytes and the launch agree.
struct DecodePlan {
  int heads_per_block = 1;
  int chunk_len = 0;
  int num_chunks = 1;
  size_t acc_bytes = 0;  // partial_acc, then partial_ml
  size_t ml_bytes = 0;
};

// The keys are cut so that a cache filled to capacity gives about kDecodeBlocksPerSm
// blocks per SM (several waves: the blocks of chunks past a row's position exit at
// once), in at most kMaxDecodeChunks chunks of at least kDecodeMinChunk keys.
DecodePlan plan_decode(int64_t rows, const AttentionShape& shape, const KvCacheLayout& layout, int sm_count) {
  DecodePlan plan;
  plan.heads_per_block = heads_per_block(shape);
  const int64_t capacity = layout.capacity < 1 ? 1 : layout.capacity;
  const int64_t units = rows * (shape.n_heads / plan.heads_per_block);
  const int64_t target = kDecodeBlocksPerSm * static_cast<int64_t>(sm_count < 1 ? 1 : sm_count);
  int64_t chunks = (target + units - 1) / units;
  if (chunks > kMaxDecodeChunks) chunks = kMaxDecodeChunks;
  int64_t chunk = chunks <= 1 ? capacity : (capacity + chunks - 1) / chunks;
  chunk = (chunk + kDecodeMinChunk - 1) / kDecodeMinChunk * kDecodeMinChunk;
  if (chunk >= capacity) {
    plan.chunk_len = static_cast<int>(capacity);
    plan.num_chunks = 1;
    return plan;
  }
  plan.chunk_len = static_cast<int>(chunk);
  plan.num_chunks = static_cast<int>((capacity + chunk - 1) / chunk);
  const size_t slots = static_cast<size_t>(rows * shape.n_heads) * static_cast<size_t>(plan.num_chunks);
  plan.acc_bytes = (slots * static_cast<size_t>(shape.head_dim) * sizeof(float) + 255) / 256 * 256;
  plan.ml_bytes = slots * 2 * sizeof(float);
  return plan;
}

int lanes_for(int nvec) {
  int lanes = 1;
  while (lanes < nvec && lanes < 32) lanes *= 2;
  return lanes;
}

template <typename T, int VEC, int NPL, int QH>
cudaError_t launch_decode_with(DecodeParams p, const KvTable& table, int64_t rows, bool batched,
                               cudaStream_t stream) {
  p.lanes_per_key = lanes_for(p.head_dim / VEC);
  const dim3 grid(static_cast<unsigned>(rows * p.units_per_row), static_cast<unsigned>(p.num_chunks));
  if (batched) (void)detail::launch(attention_decode_kernel<T, VEC, NPL, QH, true>, grid, kDecodeThreads, 0, stream, p, table);
  else (void)detail::launch(attention_decode_kernel<T, VEC, NPL, QH, false>, grid, kDecodeThreads, 0, stream, p, table);
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess || p.num_chunks == 1) return status;
  (void)detail::launch(attention_combine_kernel, static_cast<unsigned>(rows * p.n_heads), kDecodeThreads, 0, stream, p);
  return cudaGetLastError();
}

template <typename T, int VEC, int NPL>
cudaError_t launch_decode_heads(int qh, const DecodeParams& p, const KvTable& table, int64_t rows, bool batched,
                                cudaStream_t stream) {
  switch (qh) {
    case 4: return launch_decode_with<T, VEC, NPL, 4>(p, table, rows, batched, stream);
    case 2: return launch_decode_with<T, VEC, NPL, 2>(p, table, rows, batched, stream);
    default: return launch_decode_with<T, VEC, NPL, 1>(p, table, rows, batched, stream);
  }
}

bool decode_shape_ok(int64_t rows, const AttentionShape& shape, const KvCacheLayout& layout) {
  return shape.head_dim >= 1 && shape.head_dim <= kMaxAttentionHeadDim && shape.n_kv_heads >= 1 &&
         shape.n_heads % shape.n_kv_heads == 0 && layout.capacity <= INT32_MAX && rows * shape.n_heads <= INT32_MAX;
}

// One launch (plus its combine) over `rows` query rows: of one sequence (`table` null)
// or of up to kMaxSessionsPerLaunch sessions (`table` holds their caches).
cudaError_t launch_decode(const float* q, const void* k_cache, const void* v_cache, const KvTable* table,
                          int64_t row_offset, const KvCacheLayout& layout, const int32_t* positions, int64_t rows,
                          const AttentionShape& shape, float* out, void* workspace, int sm_count, DeviceError* error,
                          cudaStream_t stream) {
  const DecodePlan plan = plan_decode(rows, shape, layout, sm_count);
  if (plan.num_chunks > 1 && workspace == nullptr) return cudaErrorInvalidValue;
  const bool batched = table != nullptr;
  DecodeParams p{};
  p.q = q;
  p.q_stride = shape.q_stride;
  p.k_cache = k_cache;
  p.v_cache = v_cache;
  p.row_offset = row_offset;
  p.capacity = layout.capacity;
  p.kv_stride = layout.row_stride;
  p.positions = positions;
  p.n_heads = static_cast<int>(shape.n_heads);
  p.units_per_row = static_cast<int>(shape.n_heads / plan.heads_per_block);
  p.group = static_cast<int>(shape.n_heads / shape.n_kv_heads);
  p.head_dim = static_cast<int>(shape.head_dim);
  p.scale = shape.scale;
  p.chunk_len = plan.chunk_len;
  p.num_chunks = plan.num_chunks;
  p.out = out;
  p.out_stride = shape.out_stride;
  p.partial_acc = static_cast<float*>(workspace);
  p.partial_ml = plan.num_chunks > 1 ? reinterpret_cast<float*>(static_cast<char*>(workspace) + plan.acc_bytes)
                                     : nullptr;
  p.error = error;
  // 16-byte loads when every K / V row segment starts 16-byte aligned.
  const size_t element = dtype_bytes(layout.dtype);
  bool vec16 = (shape.head_dim * element) % 16 == 0 && (layout.row_stride * element) % 16 == 0;
  if (batched) {
    for (int64_t b = 0; b < rows; ++b) vec16 = vec16 && aligned(table->k[b], 16) && aligned(table->v[b], 16);
  } else {
    vec16 = vec16 && aligned(k_cache, 16) && aligned(v_cache, 16);
  }
  static const KvTable kNoTable{};
  const KvTable& t = batched ? *table : kNoTable;
  const int qh = plan.heads_per_block;
  switch (layout.dtype) {
    case Dtype::kF32:
      return vec16 ? launch_decode_heads<float, 4, 2>(qh, p, t, rows, batched, stream)
                   : launch_decode_heads<float, 1, 8>(qh, p, t, rows, batched, stream);
    case Dtype::kF16:
      return vec16 ? launch_decode_heads<__half, 8, 1>(qh, p, t, rows, batched, stream)
                   : launch_decode_heads<__half, 1, 8>(qh, p, t, rows, batched, stream);
    case Dtype::kBF16:
      return vec16 ? launch_decode_heads<__nv_bfloat16, 8, 1>(qh, p, t, rows, batched, stream)
                   : launch_decode_heads<__nv_bfloat16, 1, 8>(qh, p, t, rows, batched, stream);
  }
  return cudaErrorInvalidValue;
}

// =================================================================================
// Flash prefill (16-bit caches, tensor cores)
// =================================================================================
//
// Block: 4 warps, kFlashM = 64 query rows of one head (16 per warp), walking the keys
// in tiles of kFlashN = 64. Per tile: S = Q K^T (mma m16n8k16, Q fragments held in
// registers since the start, K from shared memory), causal mask, online softmax on the
// S fragments (each thread holds two rows' values; a row's four threads are one quad),
// then O += P V with P re-packed from the S accumulators as A fragments and V read
// with ldmatrix.trans. K(j+1) streams in (cp.async) during softmax and P V of tile j;
// V(j) during S of tile j. Query blocks run heaviest (longest causal window) first.

constexpr int kFlashM = 64;
constexpr int kFlashN = 64;
constexpr int kFlashThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

struct FlashParams {
  const float* q;
  int64_t q_stride;
  const void* k_cache;
  const void* v_cache;
  int64_t kv_stride;  // elements
  int64_t capacity;
  const int32_t* positions;
  int seq;
  int group;  // query heads per kv head
  float scale_log2;  // scale * log2(e): softmax in base 2
  float* out;
  int64_t out_stride;
  DeviceError* error;
};

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronously; `bytes` = 0 writes zeros without reading.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(dst)), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// d += a * b, m16n8k16, f32 accumulators.
template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}

template <typename T, int D>
__global__ void __launch_bounds__(kFlashThreads) flash_prefill_kernel(const FlashParams p) {
  detail::await_prior_grids();
  static_assert(D % 16 == 0 && D <= 128, "head_dim: a multiple of 16, at most 128");
  constexpr int kStride = D + 8;  // shared row stride (elements): 16-byte pad, no bank conflicts
  constexpr int kChunks = D / 8;  // 16-byte pieces per row
  __shared__ alignas(16) T k_tile[kFlashN * kStride];
  __shared__ alignas(16) T v_tile[kFlashN * kStride];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int quad_row = lane / 4, quad_col = lane % 4;  // mma fragment coordinates
  const int m_block = gridDim.x - 1 - blockIdx.x;     // heaviest first
  const int head = blockIdx.y;
  const int m0 = m_block * kFlashM;
  const int64_t past = p.positions[0];
  if (past < 0 || past + p.seq > p.capacity) {
    if (blockIdx.x == 0 && head == 0 && threadIdx.x == 0)
      report_error(p.error, kAttentionPositionOutOfRange, past < 0 ? past : past + p.seq - 1,
                   past < 0 ? 0 : p.seq - 1, p.capacity);
    return;
  }
  if (head == 0 && threadIdx.x < kFlashM && m0 + static_cast<int>(threadIdx.x) < p.seq) {
    const int r = m0 + threadIdx.x;
    if (r > 0 && p.positions[r] != past + r)
      report_error(p.error, kAttentionNotConsecutive, p.positions[r], r, p.positions[r - 1]);
  }
  const int64_t keys = past + p.seq;  // valid cache rows
  const int m_end = min(m0 + kFlashM, p.seq);
  const int n_tiles = static_cast<int>((past + m_end + kFlashN - 1) / kFlashN);  // keys [0, past + m_end)
  const int64_t kv_offset = static_cast<int64_t>(head / p.group) * D;
  const T* k_base = static_cast<const T*>(p.k_cache) + kv_offset;
  const T* v_base = static_cast<const T*>(p.v_cache) + kv_offset;

  // Cache rows [n0, n0 + kFlashN) of k_base / v_base into `tile`; rows >= keys are zeros.
  auto load_tile = [&](T* tile, const T* base, int64_t n0) {
    for (int c = threadIdx.x; c < kFlashN * kChunks; c += kFlashThreads) {
      const int r = c / kChunks, col = (c % kChunks) * 8;
      const int64_t key = n0 + r;
      const bool valid = key < keys;
      cp_async16(tile + r * kStride + col, valid ? base + key * p.kv_stride + col : base, valid ? 16 : 0);
    }
  };

  // Q fragments (rows r0 and r0 + 8 of this warp's 16), rounded to T.
  const int r0 = m0 + warp * 16 + quad_row, r1 = r0 + 8;
  uint32_t q_frag[D / 16][4];
  {
    const float* q0 = p.q + static_cast<int64_t>(r0) * p.q_stride + static_cast<int64_t>(head) * D;
    const float* q1 = p.q + static_cast<int64_t>(r1) * p.q_stride + static_cast<int64_t>(head) * D;
    const bool ok0 = r0 < p.seq, ok1 = r1 < p.seq;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const int c = kk * 16 + 2 * quad_col;
      q_frag[kk][0] = detail::pack2(ok0 ? q0[c] : 0.0f, ok0 ? q0[c + 1] : 0.0f, T{});
      q_frag[kk][1] = detail::pack2(ok1 ? q1[c] : 0.0f, ok1 ? q1[c + 1] : 0.0f, T{});
      q_frag[kk][2] = detail::pack2(ok0 ? q0[c + 8] : 0.0f, ok0 ? q0[c + 9] : 0.0f, T{});
      q_frag[kk][3] = detail::pack2(ok1 ? q1[c + 8] : 0.0f, ok1 ? q1[c + 9] : 0.0f, T{});
    }
  }
  const int64_t pos0 = past + r0, pos1 = past + r1;  // the rows' positions (last visible key)

  float o[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
  float row_max[2] = {-INFINITY, -INFINITY};  // base-2 scaled
  float row_sum[2] = {0.0f, 0.0f};            // this thread's columns only; quad-summed at the end

  load_tile(k_tile, k_base, 0);
  cp_async_commit();
  for (int j = 0; j < n_tiles; ++j) {
    const int64_t n0 = static_cast<int64_t>(j) * kFlashN;
    load_tile(v_tile, v_base, n0);
    cp_async_commit();
    cp_async_wait<1>();  // K(j) has landed
    __syncthreads();

    float s[kFlashN / 8][4];
#pragma unroll
    for (int nt = 0; nt < kFlashN / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
#pragma unroll
      for (int nt = 0; nt < kFlashN / 8; ++nt) {
        const T* k_row = k_tile + (nt * 8 + quad_row) * kStride + kk * 16 + 2 * quad_col;
        mma16816<T>(s[nt], q_frag[kk], *reinterpret_cast<const uint32_t*>(k_row),
                    *reinterpret_cast<const uint32_t*>(k_row + 8));
      }
    __syncthreads();  // every warp is done with k_tile
    if (j + 1 < n_tiles) {
      load_tile(k_tile, k_base, n0 + kFlashN);
      cp_async_commit();
    }

    // Causal mask, scale, online softmax. s[nt][0..1]: row r0, keys n0 + nt*8 + 2*quad_col + {0,1};
    // s[nt][2..3]: row r1.
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kFlashN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t key = n0 + nt * 8 + 2 * quad_col + (e & 1);
        const int64_t limit = e < 2 ? pos0 : pos1;
        s[nt][e] = key > limit ? -INFINITY : s[nt][e] * p.scale_log2;
        tile_max[e / 2] = fmaxf(tile_max[e / 2], s[nt][e]);
      }
    float rescale[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(kFullMask, tile_max[h], 1));
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(kFullMask, tile_max[h], 2));
      const float new_max = fmaxf(row_max[h], tile_max[h]);  // finite: key 0 is in tile 0 for every row
      rescale[h] = exp2f(row_max[h] - new_max);
      row_max[h] = new_max;
      row_sum[h] *= rescale[h];
    }
#pragma unroll
    for (int nt = 0; nt < kFlashN / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = exp2f(s[nt][e] - row_max[e / 2]);
        row_sum[e / 2] += s[nt][e];
      }
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      o[dt][0] *= rescale[0];
      o[dt][1] *= rescale[0];
      o[dt][2] *= rescale[1];
      o[dt][3] *= rescale[1];
    }

    if (j + 1 < n_tiles) cp_async_wait<1>();  // V(j) has landed (K(j+1) may be in flight)
    else cp_async_wait<0>();
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kFlashN / 16; ++kk) {
      const uint32_t a[4] = {detail::pack2(s[2 * kk][0], s[2 * kk][1], T{}),
                             detail::pack2(s[2 * kk][2], s[2 * kk][3], T{}),
                             detail::pack2(s[2 * kk + 1][0], s[2 * kk + 1][1], T{}),
                             detail::pack2(s[2 * kk + 1][2], s[2 * kk + 1][3], T{})};
      // ldmatrix lanes 0-7 / 8-15 / 16-23 / 24-31 address keys +0..7 / +8..15 / +0..7 /
      // +8..15 at dims +0 / +0 / +8 / +8: b0, b1 of dim tile 2*dp, then of 2*dp + 1.
      const int key = kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
#pragma unroll
      for (int dp = 0; dp < D / 16; ++dp) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, v_tile + key * kStride + dp * 16 + (lane >> 4) * 8);
        mma16816<T>(o[2 * dp], a, b[0], b[1]);
        mma16816<T>(o[2 * dp + 1], a, b[2], b[3]);
      }
    }
    __syncthreads();  // every warp is done with v_tile
  }

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    row_sum[h] += __shfl_xor_sync(kFullMask, row_sum[h], 1);
    row_sum[h] += __shfl_xor_sync(kFullMask, row_sum[h], 2);
  }
  const float inv0 = 1.0f / row_sum[0], inv1 = 1.0f / row_sum[1];
  float* out0 = p.out + static_cast<int64_t>(r0) * p.out_stride + static_cast<int64_t>(head) * D;
  float* out1 = p.out + static_cast<int64_t>(r1) * p.out_stride + static_cast<int64_t>(head) * D;
#pragma unroll
  for (int dt = 0; dt < D / 8; ++dt) {
    const int c = dt * 8 + 2 * quad_col;
    if (r0 < p.seq) {
      out0[c] = o[dt][0] * inv0;
      out0[c + 1] = o[dt][1] * inv0;
    }
    if (r1 < p.seq) {
      out1[c] = o[dt][2] * inv1;
      out1[c + 1] = o[dt][3] * inv1;
    }
  }
}

}  // namespace

size_t attention_decode_workspace_bytes(int64_t rows, const AttentionShape& shape, const KvCacheLayout& layout,
                                        int sm_count) {
  const DecodePlan plan = plan_decode(rows, shape, layout, sm_count);
  return plan.acc_bytes + plan.ml_bytes;
}

size_t attention_decode_batched_workspace_bytes(int64_t batch, const AttentionShape& shape,
                                                const KvCacheLayout& layout, int sm_count) {
  // Launches of kMaxSessionsPerLaunch sessions, then the remainder (which may split
  // its keys where the full launches do not); they run one after the other.
  const size_t full = batch >= kMaxSessionsPerLaunch
                          ? attention_decode_workspace_bytes(kMaxSessionsPerLaunch, shape, layout, sm_count)
                          : 0;
  const int64_t rest = batch % kMaxSessionsPerLaunch;
  const size_t last = rest > 0 ? attention_decode_workspace_bytes(rest, shape, layout, sm_count) : 0;
  return full > last ? full : last;
}

cudaError_t attention_decode(const float* q, const void* k_cache, const void* v_cache, const KvCacheLayout& layout,
                             const int32_t* positions, int64_t rows, const AttentionShape& shape, float* out,
                             void* workspace, int sm_count, DeviceError* error, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (!decode_shape_ok(rows, shape, layout)) return cudaErrorInvalidValue;
  return launch_decode(q, k_cache, v_cache, nullptr, 0, layout, positions, rows, shape, out, workspace, sm_count,
                       error, stream);
}

cudaError_t attention_decode_batched(const float* q, const void* const* k_caches, const void* const* v_caches,
                                     const KvCacheLayout& layout, const int32_t* positions, int64_t batch,
                                     const AttentionShape& shape, float* out, void* workspace, int sm_count,
                                     DeviceError* error, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  if (k_caches == nullptr || v_caches == nullptr || !decode_shape_ok(kMaxSessionsPerLaunch, shape, layout))
    return cudaErrorInvalidValue;
  for (int64_t first = 0; first < batch; first += kMaxSessionsPerLaunch) {
    const int64_t n = batch - first < kMaxSessionsPerLaunch ? batch - first : kMaxSessionsPerLaunch;
    KvTable table{};
    for (int64_t b = 0; b < n; ++b) {
      table.k[b] = k_caches[first + b];
      table.v[b] = v_caches[first + b];
    }
    const cudaError_t status =
        launch_decode(q + first * shape.q_stride, nullptr, nullptr, &table, first, layout, positions + first, n, shape,
                      out + first * shape.out_stride, workspace, sm_count, error, stream);
    if (status != cudaSuccess) return status;
  }
  return cudaSuccess;
}

bool attention_prefill_supported(const void* k_cache, const void* v_cache, const KvCacheLayout& layout,
                                 const AttentionShape& shape) {
  return (layout.dtype == Dtype::kF16 || layout.dtype == Dtype::kBF16) &&
         (shape.head_dim == 64 || shape.head_dim == 128) && shape.n_kv_heads >= 1 &&
         shape.n_heads % shape.n_kv_heads == 0 && shape.n_heads <= 65535 && layout.row_stride % 8 == 0 &&
         aligned(k_cache, 16) && aligned(v_cache, 16);
}

cudaError_t attention_prefill(const float* q, const void* k_cache, const void* v_cache, const KvCacheLayout& layout,
                              const int32_t* positions, int64_t rows, const AttentionShape& shape, float* out,
                              DeviceError* error, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (!attention_prefill_supported(k_cache, v_cache, layout, shape) || rows > INT32_MAX - kFlashM)
    return cudaErrorInvalidValue;
  FlashParams p{};
  p.q = q;
  p.q_stride = shape.q_stride;
  p.k_cache = k_cache;
  p.v_cache = v_cache;
  p.kv_stride = layout.row_stride;
  p.capacity = layout.capacity;
  p.positions = positions;
  p.seq = static_cast<int>(rows);
  p.group = static_cast<int>(shape.n_heads / shape.n_kv_heads);
  p.scale_log2 = shape.scale * kLog2e;
  p.out = out;
  p.out_stride = shape.out_stride;
  p.error = error;
  const dim3 grid(static_cast<unsigned>((rows + kFlashM - 1) / kFlashM), static_cast<unsigned>(shape.n_heads));
  const bool f16 = layout.dtype == Dtype::kF16;
  if (shape.head_dim == 64) {
    if (f16) (void)detail::launch(flash_prefill_kernel<__half, 64>, grid, kFlashThreads, 0, stream, p);
    else (void)detail::launch(flash_prefill_kernel<__nv_bfloat16, 64>, grid, kFlashThreads, 0, stream, p);
  } else {
    if (f16) (void)detail::launch(flash_prefill_kernel<__half, 128>, grid, kFlashThreads, 0, stream, p);
    else (void)detail::launch(flash_prefill_kernel<__nv_bfloat16, 128>, grid, kFlashThreads, 0, stream, p);
  }
  return cudaGetLastError();
}

}  // namespace djinn::gpu
