#include "djinn/backend/cpu/vector_kernels.h"

// GCC 12 reports the deliberately undefined operands inside its own AVX-512 intrinsics
// (_mm512_reduce_add_ps, _mm512_max_ps, ...) as maybe-uninitialized (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "djinn/backend/cpu/skinny_gemm.h"

namespace djinn::cpu {
namespace {

__attribute__((target("avx512f"))) void scaled_dots_avx512(const float* q, const float* keys, int64_t ld, int64_t rows,
                                                            int64_t dim, float scale, float* scores) {
  for (int64_t t = 0; t < rows; ++t) {
    const float* k = keys + t * ld;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t d = 0; d < dim; d += 16) {
      const __mmask16 mask = dim - d >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (dim - d)) - 1);
      acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, q + d), _mm512_maskz_loadu_ps(mask, k + d), acc);
    }
    scores[t] = scale * _mm512_reduce_add_ps(acc);
  }
}

__attribute__((target("avx512f"))) void weighted_rows_avx512(const float* weights, const float* values, int64_t ld,
                                                              int64_t rows, int64_t dim, float* out) {
  for (int64_t d = 0; d < dim; d += 64) {  // four vectors of the output at a time
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    __mmask16 mask[4];
    for (int v = 0; v < 4; ++v) {
      const int64_t lanes = std::clamp<int64_t>(dim - d - 16 * v, 0, 16);
      mask[v] = lanes == 16 ? __mmask16(0xFFFF) : __mmask16((1u << lanes) - 1);
    }
    for (int64_t t = 0; t < rows; ++t) {
      const __m512 p = _mm512_set1_ps(weights[t]);
      const float* v_row = values + t * ld + d;
      for (int v = 0; v < 4; ++v) acc[v] = _mm512_fmadd_ps(p, _mm512_maskz_loadu_ps(mask[v], v_row + 16 * v), acc[v]);
    }
    for (int v = 0; v < 4; ++v) _mm512_mask_storeu_ps(out + d + 16 * v, mask[v], acc[v]);
  }
}

// glibc's AVX-512 expf over sixteen lanes (libmvec; x86_64 vector function ABI).
extern "C" __attribute__((target("avx512f"))) __m512 _ZGVeN16v_expf(__m512 x);

constexpr float kSqrt2OverPi = 0.7978845608028654f;

inline float gelu_new_one(float v) {
  // tanh(u) = 1 - 2 / (exp(2u) + 1): exp is several times cheaper than tanh in libm,
  // and exact to a few ulps; saturates cleanly (exp -> inf gives 1, exp -> 0 gives -1).
  const float u = kSqrt2OverPi * (v + 0.044715f * v * v * v);
  const float tanh_u = 1.0f - 2.0f / (std::exp(2.0f * u) + 1.0f);
  return 0.5f * v * (1.0f + tanh_u);
}

// gelu_new of in[0, 16 * floor(n / 16)); returns how many it wrote.
__attribute__((target("avx512f"))) int64_t gelu_new_avx512(const float* in, float* out, int64_t n) {
  const __m512 c = _mm512_set1_ps(kSqrt2OverPi), cubic = _mm512_set1_ps(0.044715f), one = _mm512_set1_ps(1.0f),
               two = _mm512_set1_ps(2.0f), half = _mm512_set1_ps(0.5f);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(in + i);
    const __m512 u = _mm512_mul_ps(c, _mm512_add_ps(v, _mm512_mul_ps(cubic, _mm512_mul_ps(_mm512_mul_ps(v, v), v))));
    const __m512 e = _ZGVeN16v_expf(_mm512_mul_ps(two, u));
    const __m512 tanh_u = _mm512_sub_ps(one, _mm512_div_ps(two, _mm512_add_ps(e, one)));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, tanh_u)));
  }
  return i;
}

__attribute__((target("avx512f"))) float max_avx512(const float* row, int64_t n) {
  __m512 best = _mm512_set1_ps(-__builtin_inff());
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) best = _mm512_max_ps(_mm512_loadu_ps(row + i), best);  // a NaN loaded loses
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, best);
  float value = lanes[0];
  for (float lane : lanes) value = std::max(value, lane);
  for (; i < n; ++i) value = std::max(value, row[i]);
  return value;
}

}  // namespace

void scaled_dots(const float* q, const float* keys, int64_t ld, int64_t rows, int64_t dim, float scale, float* scores) {
  if (skinny_gemm_available()) return scaled_dots_avx512(q, keys, ld, rows, dim, scale, scores);
  for (int64_t t = 0; t < rows; ++t) {
    float dot = 0;
    for (int64_t d = 0; d < dim; ++d) dot += q[d] * keys[t * ld + d];
    scores[t] = scale * dot;
  }
}

void weighted_rows(const float* weights, const float* values, int64_t ld, int64_t rows, int64_t dim, float* out) {
  if (skinny_gemm_available()) return weighted_rows_avx512(weights, values, ld, rows, dim, out);
  std::fill_n(out, dim, 0.0f);
  for (int64_t t = 0; t < rows; ++t)
    for (int64_t d = 0; d < dim; ++d) out[d] += weights[t] * values[t * ld + d];
}

void gelu_new_f32(const float* in, float* out, int64_t n) {
  const int64_t done = skinny_gemm_available() ? gelu_new_avx512(in, out, n) : 0;
  for (int64_t i = done; i < n; ++i) out[i] = gelu_new_one(in[i]);
}

int64_t argmax_f32(const float* row, int64_t n) {
  if (!skinny_gemm_available() || n < 16 || std::isnan(row[0])) return std::max_element(row, row + n) - row;
  // The largest non-NaN value, then its first position: what std::max_element returns
  // when row[0] is not NaN (a NaN later never compares larger).
  const float best = max_avx512(row, n);
  for (int64_t i = 0; i < n; ++i)
    if (row[i] == best) return i;
  return 0;  // unreachable: best is one of the elements
}

}  // namespace djinn::cpu
