// The CPU reference kernels: one function per op of the op table (graph/op_table.h,
// which gives every op's shapes and attributes). Compute is f32; inputs stored as
// f16/bf16 (weights, KV cache) are widened to f32 as they are read. GEMMs go
// through OpenBLAS. Each kernel validates what depends on data (ids, positions,
// cache capacity) and returns a Status; shapes were checked by shape inference.
//
// All views are contiguous, row-major; `out` is pre-allocated.
#pragma once

#include <span>

#include "djinn/core/shape.h"
#include "djinn/core/status.h"
#include "djinn/core/tensor.h"
#include "djinn/graph/op.h"

namespace djinn::cpu {

Status embedding(const TensorView& table, const TensorView& ids, const TensorView& out);
Status matmul(const TensorView& x, const TensorView& w, bool transpose_b, const TensorView& out);
Status add(const TensorView& a, const TensorView& b, const TensorView& out);  // out may be a
Status mul(const TensorView& a, const TensorView& b, const TensorView& out);
Status layernorm(const TensorView& x, const TensorView& gamma, const TensorView& beta, float eps,
                 const TensorView& out);
Status rmsnorm(const TensorView& x, const TensorView& gamma, float eps, const TensorView& out);
Status gelu_new(const TensorView& x, const TensorView& out);
Status silu(const TensorView& x, const TensorView& out);
// out = silu(a) * b elementwise, each element exactly as silu then mul would give it.
Status silu_mul(const TensorView& a, const TensorView& b, const TensorView& out);
Status rope(const TensorView& x, const TensorView& positions, int64_t head_dim, float theta, const TensorView& out);
Status softmax(const TensorView& x, const TensorView& out);
Status slice(const TensorView& x, int64_t start, int64_t length, const TensorView& out);
// Writes new[seq, W] into cache rows [past, past + seq).
Status kv_append(const TensorView& cache, const TensorView& fresh, int64_t past);
// Causal attention of q[seq, n_heads*head_dim] over cache rows [0, past + seq).
Status attention(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache, const OpAttrs& attrs,
                 int64_t past, const TensorView& out);
// One decode step of B sessions (see op_table.h, batched_decode_attention): row b of
// k_new / v_new goes to caches[2b] / caches[2b + 1] at row positions[b], then row b of
// q attends over rows [0, positions[b]] of them.
Status batched_decode_attention(const TensorView& q, const TensorView& k_new, const TensorView& v_new,
                                const TensorView& positions, std::span<const TensorView* const> caches,
                                const OpAttrs& attrs, const TensorView& out);
Status last_row(const TensorView& x, const TensorView& out);
// out = x rows [start, start + length) (any dtype, rank 1 or 2).
Status rows(const TensorView& x, int64_t start, int64_t length, const TensorView& out);
// out = a stacked over b (same dtype and width).
Status concat_rows(const TensorView& a, const TensorView& b, const TensorView& out);
// The `past` a kv_append / attention step writes and reads at: positions[0], after
// checking that positions[i] == positions[0] + i (one sequence, in order).
Result<int64_t> past_of(const TensorView& positions);
Status argmax(const TensorView& x, const TensorView& out);

}  // namespace djinn::cpu
