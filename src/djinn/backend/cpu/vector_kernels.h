// Small f32 vector kernels for the decode path of the CPU backend, in AVX-512 where the
// CPU has it (skinny_gemm_available()) and plain loops elsewhere. They replace BLAS
// calls too small for BLAS's call overhead (one attention head over a few hundred
// positions) and std::max_element (not vectorised).
#pragma once

#include <cstdint>

namespace djinn::cpu {

// scores[t] = scale * dot(q, keys + t * ld)   for t in [0, rows); q has `dim` floats.
void scaled_dots(const float* q, const float* keys, int64_t ld, int64_t rows, int64_t dim, float scale, float* scores);

// out[0, dim) = sum over t of weights[t] * (values + t * ld)[0, dim).
void weighted_rows(const float* weights, const float* values, int64_t ld, int64_t rows, int64_t dim, float* out);

// out[i] = gelu_new(in[i]) for i in [0, n) (the tanh approximation, tanh u computed as
// 1 - 2 / (exp(2u) + 1)): sixteen at a time through glibc's vector expf (libmvec, at
// most 4 ulp) where the CPU has AVX-512, the last n % 16 through std::exp. An
// element's result depends only on its value and its index in the call, so callers
// that pass one row at a time get the same bits whatever the batch.
void gelu_new_f32(const float* in, float* out, int64_t n);

// What std::max_element(row, row + n) - row returns (n >= 1): the first largest
// element's index, NaNs never larger (so row[0] when it is NaN).
int64_t argmax_f32(const float* row, int64_t n);

}  // namespace djinn::cpu
