// skinny_gemm: f32 out[m, n] = x[m, k] . w for few rows (2 <= m <= kSkinnyMaxRows), the
// shape of a batched decode step, reading the weight once.
//
// Why not BLAS: OpenBLAS packs both operands for every sgemm call; at m = 16 the
// packing of the weight (a full read and write of it) costs as much as the arithmetic,
// and a 16-row step took 3.3-3.7x one row's GEMV time (bench batch, gpt2, 2-core EPYC).
// These kernels stream the weight straight from memory into AVX-512 FMAs instead.
//
// Layouts (row-major, contiguous rows):
//   transpose_b = false: w is [k, n]   (GPT-2's Conv1D)
//   transpose_b = true:  w is [n, k]   (Linear, tied embeddings)
// Columns are split over the ComputePool (compute_pool.h); the caller returns when all
// are done. Threads: callable from any thread; calls from several threads take turns.
#pragma once

#include <cstdint>

namespace djinn::cpu {

inline constexpr int64_t kSkinnyMaxRows = 16;

// Whether this CPU runs the kernels (AVX-512F); when false skinny_matmul never runs.
bool skinny_gemm_available();

// Computes the product and returns true; returns false (and writes nothing) when the
// shape is not one it handles or the CPU lacks AVX-512, so the caller uses BLAS.
bool skinny_matmul(const float* x, int64_t m, int64_t k, const float* w, int64_t n, bool transpose_b, float* out);

}  // namespace djinn::cpu
