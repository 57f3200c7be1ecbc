// The op table: every op djinn knows, listed exactly once. Enums, names, arities and
// trait queries are generated from this list; adding an op here makes every
// `switch (OpKind)` without a default fail to compile until it handles the new op.
//
// X(Enum, "name", arity, traits)
//   arity  number of inputs (-1: variadic, checked by shape inference)
//   traits bit set of OpTrait
//
// Inputs, outputs and attributes per op (shapes row-major, `rows` may be symbolic):
//   embedding   (table[V, H], ids[rows] i32)             -> [rows, H] f32
//   matmul      (x[rows, K], w)                          -> [rows, N] f32
//               w is [N, K] if attrs.transpose_b (nn.Linear), else [K, N] (GPT-2 Conv1D)
//   matmul_add  (x[rows, K], w, residual[rows, N] f32)   -> [rows, N] f32: matmul(x, w) + residual, added
//               in f32 as add(matmul, residual) would (a residual connection after an output
//               projection: the product's epilogue adds it, one kernel less); w as for matmul
//   add         (a[rows, N], b[rows, N] or b[N])         -> [rows, N]   (b broadcast over rows)
//   mul         (a[rows, N], b[rows, N])                 -> [rows, N]
//   layernorm   (x[rows, H], gamma[H], beta[H]) eps      -> [rows, H]
//   rmsnorm     (x[rows, H], gamma[H]) eps               -> [rows, H]
//   gelu_new    (x)                                      -> same shape (tanh approximation)
//   silu        (x)                                      -> same shape
//   silu_mul    (a[rows, N], b[rows, N])                 -> [rows, N]: silu(a) * b (a SwiGLU MLP's gate
//               times its up projection: one pass instead of silu then mul)
//   rope        (x[rows, heads*head_dim], pos[rows] i32) head_dim, rope_theta -> same shape
//               (rotate-half layout of Hugging Face Llama)
//   softmax     (x[rows, N])                             -> [rows, N], over the last dim
//   slice       (x[rows, N]) start, length               -> [rows, length], columns [start, start+length)
//   kv_append   (cache[capacity, W], new[seq, W], pos[seq] i32) -> the same cache, rows [past, past+seq)
//               written, past = pos[0] (pos must be consecutive)
//               (the output aliases input 0; it exists so attention depends on the write)
//   attention   (q[seq, n_heads*head_dim], k_cache[capacity, n_kv_heads*head_dim], v_cache[same],
//               pos[seq] i32) n_heads, n_kv_heads, head_dim, scale -> [seq, n_heads*head_dim]
//               causal: query row i sits at position pos[i] = past+i and sees cache rows [0, past+i]
//   (Positions come in as data, not as the step's `past` symbol, so that one batched
//   decode step can serve sessions at different lengths: each session's rows carry
//   their own positions.)
//   batched_decode_attention
//               (q[B, n_heads*head_dim], k_new[B, W], v_new[B, W], pos[B] i32,
//                k_cache_0, v_cache_0, ..., k_cache_{B-1}, v_cache_{B-1}: each [capacity, W])
//               n_heads, n_kv_heads, head_dim, scale -> [B, n_heads*head_dim]
//               one decode step of B sessions at ragged lengths: row b of k_new / v_new is
//               written to session b's caches at row pos[b] (kv_append), then row b of q
//               attends over that session's rows [0, pos[b]] (attention). Arity 4 + 2B.
//   rows        (x[R, N] or x[R]) start, length          -> [length, N] / [length]: rows [start, start+length)
//               (any dtype)
//   concat_rows (a[Ra, N], b[Rb, N])                     -> [Ra+Rb, N] (same dtype)
//   last_row    (x[rows, N])                             -> [1, N]
//   argmax      (x[rows, N])                             -> [rows] i32, first maximum of each row
#pragma once

#define DJINN_OP_TABLE(X)                              \
  X(Embedding, "embedding", 2, 0)                      \
  X(MatMul, "matmul", 2, 0)                            \
  X(Add, "add", 2, kElementwise)                       \
  X(Mul, "mul", 2, kElementwise)                       \
  X(LayerNorm, "layernorm", 3, kNormalization)         \
  X(RmsNorm, "rmsnorm", 2, kNormalization)             \
  X(GeluNew, "gelu_new", 1, kElementwise)              \
  X(Silu, "silu", 1, kElementwise)                     \
  X(Rope, "rope", 2, 0)                                \
  X(Softmax, "softmax", 1, 0)                          \
  X(Slice, "slice", 1, 0)                              \
  X(KvAppend, "kv_append", 3, kWritesKv | kAliasesInput0) \
  X(Attention, "attention", 4, kReadsKv)               \
  X(BatchedDecodeAttention, "batched_decode_attention", -1, kWritesKv | kReadsKv) \
  X(Rows, "rows", 1, 0)                                \
  X(ConcatRows, "concat_rows", 2, 0)                   \
  X(LastRow, "last_row", 1, 0)                         \
  X(Argmax, "argmax", 1, 0)                            \
  X(SiluMul, "silu_mul", 2, kElementwise)              \
  X(MatMulAdd, "matmul_add", 3, 0)
