#include "djinn/backend/cpu/skinny_gemm.h"

// GCC 12 reports the deliberately undefined operands inside its own AVX-512 intrinsics
// (_mm512_reduce_add_ps, _mm512_max_ps, ...) as maybe-uninitialized (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

#include "djinn/backend/cpu/compute_pool.h"

namespace djinn::cpu {
namespace {

// ---- kernels ----------------------------------------------------------------------
//
// Both layouts take x transposed to xt [k, 16] (row j of x in lane j, zero past m), so
// the broadcasts of one step over k come from one cache line.
//
// w [k, n]: a tile of R rows x 16V columns lives in R*V accumulators over a block of
// kKBlock rows of w (V vectors of w and R broadcasts of x per row; R = 8, V = 2 measured
// best of (16, 1), (8, 2), (4, 4)). The tile is added to `out` (which the caller
// zeroed): sweeping the columns within one block of rows reads each row of w front to
// back, where walking down a column tile would touch a new page per row.
constexpr int64_t kKBlock = 16;  // measured: 8 and 32 were 30-70 % slower
// Each tile also prefetches its place in the next block of rows: with kKBlock rows in
// flight the hardware prefetchers lose track of the streams (without software prefetch
// the batched gpt2 step took 44 ms instead of 29 on the 2-core EPYC; prefetching the
// next block rather than further along the same rows saved another 8-10 %).

template <int R, int V>
__attribute__((target("avx512f"))) void tile_kn(const float* xt, int64_t k_begin, int64_t k_end, const float* w,
                                                 int64_t n, int64_t col, float* out, int64_t ldo) {
  const int64_t width = std::min<int64_t>(16 * V, n - col);
  __mmask16 mask[V];
  for (int v = 0; v < V; ++v) {
    const int64_t lanes = std::clamp<int64_t>(width - 16 * v, 0, 16);
    mask[v] = lanes == 16 ? __mmask16(0xFFFF) : __mmask16((1u << lanes) - 1);
  }
  __m512 acc[R][V];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[r][v] = _mm512_maskz_loadu_ps(mask[v], out + r * ldo + col + 16 * v);
  const float* wp = w + k_begin * n + col;
  for (int64_t i = k_begin; i < k_end; ++i, wp += n) {
    __m512 wv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      // The same tile of the next block of rows, into L2: it is read one sweep from now.
      _mm_prefetch(reinterpret_cast<const char*>(wp + kKBlock * n + 16 * v), _MM_HINT_T1);
      wv[v] = _mm512_maskz_loadu_ps(mask[v], wp + 16 * v);
    }
    const float* xi = xt + i * 16;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_set1_ps(xi[r]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(xv, wv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) _mm512_mask_storeu_ps(out + r * ldo + col + 16 * v, mask[v], acc[r][v]);
}

// w [n, k]: against xt = x transposed to [k, 16] (rows of x in the lanes, zero past m),
// each row of w yields all m outputs in one vector: acc[r] += w[row + r][i] * xt[i]
// for R = 8 rows of w at a time, each read front to back exactly once.
constexpr int kNkRows = 8;

__attribute__((target("avx512f"))) void block_nk(const float* xt, int64_t m, int64_t k, const float* w, int64_t row,
                                                  int rows, float* out, int64_t ldo) {
  __m512 acc[kNkRows];
#pragma GCC unroll 8
  for (int r = 0; r < kNkRows; ++r) acc[r] = _mm512_setzero_ps();
  const float* wr[kNkRows];
  for (int r = 0; r < kNkRows; ++r) wr[r] = w + (row + std::min(r, rows - 1)) * k;  // repeats of the last row are dropped
  for (int64_t line = 0; line < k; line += 16) {  // a cache line of each row at a time
    // The same line of the next block's rows, into L2 (read one block from now;
    // measured: the gpt2 lm_head at 16 rows in ~4 ms instead of ~5.6).
#pragma GCC unroll 8
    for (int r = 0; r < kNkRows; ++r)
      _mm_prefetch(reinterpret_cast<const char*>(wr[r] + kNkRows * k + line), _MM_HINT_T1);
    const int64_t line_end = std::min(k, line + 16);
    for (int64_t i = line; i < line_end; ++i) {
      const __m512 xv = _mm512_loadu_ps(xt + i * 16);
#pragma GCC unroll 8
      for (int r = 0; r < kNkRows; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(wr[r][i]), xv, acc[r]);
    }
  }
  alignas(64) float lanes[kNkRows][16];
  for (int r = 0; r < kNkRows; ++r) _mm512_store_ps(lanes[r], acc[r]);  // lane j: row j of x
  for (int64_t j = 0; j < m; ++j)
    for (int r = 0; r < rows; ++r) out[j * ldo + row + r] = lanes[r][j];
}

// Tiles of kKnRows rows of x by 16 * kKnVectors columns (16 accumulators).
constexpr int kKnRows = 8, kKnVectors = 2;
using KnTile = void (*)(const float*, int64_t, int64_t, const float*, int64_t, int64_t, float*, int64_t);
template <int... R>
constexpr std::array<KnTile, sizeof...(R) + 1> kn_tiles(std::integer_sequence<int, R...>) {
  return {nullptr, tile_kn<R + 1, kKnVectors>...};
}
constexpr auto kKnTiles = kn_tiles(std::make_integer_sequence<int, kKnRows>{});

// Columns [col_begin, col_end) of the product, every row of x.
// `xt` is x transposed to [k, 16] (see block_nk).
void columns(const float* xt, int64_t m, int64_t k, const float* w, int64_t n, bool transpose_b,
             float* out, int64_t col_begin, int64_t col_end) {
  if (!transpose_b) {
    for (int64_t r = 0; r < m; ++r) std::fill(out + r * n + col_begin, out + r * n + col_end, 0.0f);
    for (int64_t k_begin = 0; k_begin < k; k_begin += kKBlock) {
      const int64_t k_end = std::min(k, k_begin + kKBlock);
      for (int64_t col = col_begin; col < col_end; col += 16 * kKnVectors)
        for (int64_t r = 0; r < m; r += kKnRows) {
          const int rows = static_cast<int>(std::min<int64_t>(kKnRows, m - r));
          // Tiles never cross col_end: callers split at multiples of the tile width (or at n).
          kKnTiles[static_cast<size_t>(rows)](xt + r, k_begin, k_end, w, n, col, out + r * n, n);
        }
    }
  } else {
    for (int64_t row = col_begin; row < col_end; row += kNkRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kNkRows, col_end - row));
      block_nk(xt, m, k, w, row, rows, out, n);
    }
  }
}

}  // namespace

bool skinny_gemm_available() {
  static const bool available = __builtin_cpu_supports("avx512f");
  return available;
}

bool skinny_matmul(const float* x, int64_t m, int64_t k, const float* w, int64_t n, bool transpose_b, float* out) {
  if (m < 2 || m > kSkinnyMaxRows || k <= 0 || n <= 0 || !skinny_gemm_available()) return false;
  const int64_t tile = transpose_b ? kNkRows : 16 * kKnVectors;
  // x transposed to [k, 16] for both layouts (the broadcasts of one step over k then
  // come from one cache line).
  thread_local std::vector<float> xt;  // kept between calls: no page faults per matmul
  {
    xt.assign(static_cast<size_t>(k) * 16, 0.0f);
    for (int64_t j = 0; j < m; ++j)
      for (int64_t i = 0; i < k; ++i) xt[i * 16 + j] = x[j * k + i];
  }
  // Columns split over the pool at multiples of the tile width. (The workers read the
  // caller's xt: a thread_local named inside the lambda would be their own.)
  const float* transposed = xt.data();
  ComputePool::instance().for_ranges(n, tile, [&, transposed](int64_t begin, int64_t end) {
    columns(transposed, m, k, w, n, transpose_b, out, begin, end);
  });
  return true;
}

}  // namespace djinn::cpu
