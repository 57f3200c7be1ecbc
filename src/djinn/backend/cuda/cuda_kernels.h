// The CUDA backend's kernels, behind plain C++17 launchers (raw pointers and integers,
// no djinn types) so that the .cu files compile with nvcc's C++17 while the Backend
// (cuda_backend.cc) stays C++20. Each launcher computes the same function as the CPU
// reference kernel of the same name (backend/cpu/cpu_kernels.h); see there and in
// graph/op_table.h for the ops' meaning.
//
// Conventions shared by every launcher:
//  - Pointers are device memory. Matrices are row-major; a `*_stride` is the distance
//    between consecutive rows in elements (not bytes); the last dimension is dense.
//  - Activations are f32. `Dtype` names the storage of a weight or KV-cache operand,
//    widened to f32 when read (exactly) and narrowed from f32 when written
//    (round-to-nearest-even).
//  - Every launcher enqueues on `stream` and returns without waiting: the result is the
//    launch's cudaGetLastError (configuration errors), never a data error.
//  - Data errors (a token id outside the vocabulary, a position outside the KV cache,
//    positions that are not consecutive) are recorded in `*error` (device memory; the
//    first error wins, later ones are dropped) and the offending row's work is skipped:
//    no kernel reads or writes outside its operands. The caller reads the record after
//    synchronizing the stream (CudaBackend::synchronize) and resets it.
//  - Sizes: rows and widths are int64; every row count must be < 2^31 (grid limits).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace djinn::gpu {

// Storage of a floating operand (weights, KV caches).
enum class Dtype : int { kF32 = 0, kF16 = 1, kBF16 = 2 };
inline size_t dtype_bytes(Dtype dtype) { return dtype == Dtype::kF32 ? 4 : 2; }

// What a kernel found wrong with its data. `values` depend on the code (see each).
enum DeviceErrorCode : int32_t {
  kNoDeviceError = 0,
  kEmbeddingIdOutOfRange = 1,         // values: id, row, vocab
  kRopeNegativePosition = 2,          // values: position, row, -
  kKvAppendPositionOutOfRange = 3,    // values: position, row, capacity
  kKvAppendNotConsecutive = 4,        // values: position, row, previous row's position
  kAttentionPositionOutOfRange = 5,   // values: position, row, capacity
  kAttentionNotConsecutive = 6,       // values: position, row, previous row's position
};

// The device-side error record (one per backend, 32 bytes, zeroed = no error).
// `code` is claimed with atomicCAS (first error wins); the thread that claims it then
// writes `values`. Read only after the stream is synchronized.
struct DeviceError {
  int32_t code;
  int32_t unused;
  int64_t values[3];
};

// Whether kernels are launched with programmatic stream serialization (Note
// [Programmatic dependent launch] in cuda_common.cuh). Process-wide; on by default.
void set_programmatic_launch(bool enabled);
bool programmatic_launch();
// Whether the backend's kernels were compiled with their griddepcontrol.wait (PTX for
// compute capability 9.0 or later, running on such a device): only then may they be
// launched early. A build for an older architecture runs, launching the plain way.
bool kernels_await_prior_grids();

// ---------------------------------------------------------------------------------
// Span copies by SM threads (small swaps)
// ---------------------------------------------------------------------------------

// Byte spans moved by the SMs instead of the copy engines, for swaps so small that the
// copy engines' per-region setup dominates (a 1 MiB KV cache in 24 slot runs moved at
// half the speed of one contiguous copy). Either side of a span may be host memory
// the device maps (registered, at the same address): the kernel's loads and stores
// then cross PCIe directly. Every src, dst and size must be 16-byte aligned.
struct SpanCopy {
  const void* src;
  void* dst;
  uint64_t bytes;
};
constexpr int kMaxSpanCopies = 128;  // the table is a kernel parameter (3 KiB)
struct SpanCopyTable {
  int32_t count;
  SpanCopy spans[kMaxSpanCopies];
};
cudaError_t copy_spans(const SpanCopyTable& table, cudaStream_t stream);

// ---------------------------------------------------------------------------------
// Decode GEMV
// ---------------------------------------------------------------------------------

// out[m, n] f32 = round(x)[m, k] . w^T for the few activation rows of a decode step:
// w [n, k] row-major (nn.Linear) of 16-bit `dtype`, x [m, k] f32 dense, each element
// rounded to `dtype` (as the GEMM path narrows it before cuBLAS) and every product
// summed in f32; out dense. Supported when gemv_supported(...): 16-bit w, 1 <= m <=
// kMaxGemvRows, n < 2^31, k a multiple of 8, w and x 16-byte aligned. One warp per
// output column, so the summation order differs from cuBLAS's: f32 rounding, ~1e-7
// relative to the sum of |products| (more relative to a result that cancels).
// `residual` (nullable) is [m, n] f32 dense, added to each sum in f32 (matmul_add).
inline constexpr int64_t kMaxGemvRows = 4;
bool gemv_supported(const void* w, Dtype dtype, const float* x, int64_t m, int64_t n, int64_t k);
cudaError_t gemv(const void* w, Dtype dtype, const float* x, int64_t m, int64_t n, int64_t k, const float* residual,
                 float* out, cudaStream_t stream);

// ---------------------------------------------------------------------------------
// Gathers, conversions, elementwise
// ---------------------------------------------------------------------------------

// out[r, :] = widen(table[ids[r], :]) for r < rows; table [vocab, hidden] of `dtype`
// (dense rows), ids [rows] i32, out [rows, hidden] f32. An id outside [0, vocab)
// records kEmbeddingIdOutOfRange and leaves that output row unwritten.
cudaError_t embedding(const void* table, Dtype dtype, int64_t vocab, int64_t hidden, const int32_t* ids,
                      int64_t rows, float* out, DeviceError* error, cudaStream_t stream);

// dst[i] = narrow(src[i]) for i < count: f32 into `dtype` (f32: a copy).
cudaError_t convert_from_f32(const float* src, void* dst, Dtype dtype, int64_t count, cudaStream_t stream);

enum class BinaryOp : int { kAdd = 0, kMul = 1 };
// out = a (op) widen(b), elementwise, exactly one f32 operation per element.
// a and out [rows, cols] f32 dense (out may alias a); b is [rows, cols] or, with
// `broadcast_b`, one row [cols] added to every row; b's storage is `b_dtype`.
cudaError_t binary(BinaryOp op, const float* a, const void* b, Dtype b_dtype, bool broadcast_b, int64_t rows,
                   int64_t cols, float* out, cudaStream_t stream);

enum class UnaryOp : int { kGeluNew = 0, kSilu = 1 };
// out = f(x) over `count` f32 elements (out may alias x); gelu_new is the tanh
// approximation written as 1 - 2 / (exp(2u) + 1), as on the CPU.
cudaError_t unary(UnaryOp op, const float* x, float* out, int64_t count, cudaStream_t stream);
// out = silu(a) * b over `count` f32 elements (a, b, out dense; out may alias a or b):
// each element as unary(kSilu) then binary(kMul) would give it.
cudaError_t silu_mul(const float* a, const float* b, float* out, int64_t count, cudaStream_t stream);

// ---------------------------------------------------------------------------------
// Row-wise (one block per row)
// ---------------------------------------------------------------------------------

// out[r] = (x[r] - mean) / sqrt(var + eps) * gamma + beta (biased variance, two
// passes); x, out [rows, hidden] f32 dense (may alias); gamma, beta [hidden] of
// `param_dtype`.
cudaError_t layernorm(const float* x, const void* gamma, const void* beta, Dtype param_dtype, float eps, int64_t rows,
                      int64_t hidden, float* out, cudaStream_t stream);
// out[r] = gamma * (x[r] / sqrt(mean(x[r]^2) + eps)); shapes as layernorm.
cudaError_t rmsnorm(const float* x, const void* gamma, Dtype gamma_dtype, float eps, int64_t rows, int64_t hidden,
                    float* out, cudaStream_t stream);
// Softmax over each row of x [rows, cols] f32 dense into out (may alias x); cols >= 1.
cudaError_t softmax(const float* x, int64_t rows, int64_t cols, float* out, cudaStream_t stream);
// out[r] = the first index of the maximum of x[r] (x [rows, cols] f32, cols >= 1;
// out [rows] i32). Rows holding NaN give an unspecified index.
cudaError_t argmax(const float* x, int64_t rows, int64_t cols, int32_t* out, cudaStream_t stream);

// Rotary embedding, rotate-half layout, over every head of x [rows, width] f32
// (width = heads * head_dim, head_dim even and <= kMaxRopeHeadDim); the angle of pair
// i at row r is float(positions[r]) * float(1 / theta^(2i / head_dim)) (inverse
// frequency in double, as on the CPU). out may alias x. A negative position records
// kRopeNegativePosition and leaves that row unwritten.
inline constexpr int64_t kMaxRopeHeadDim = 8192;
cudaError_t rope(const float* x, const int32_t* positions, int64_t rows, int64_t width, int64_t head_dim, float theta,
                 float* out, DeviceError* error, cudaStream_t stream);

// out[r, :] = x[r, start : start + length]; x [rows, x_cols] f32 dense.
cudaError_t slice(const float* x, int64_t rows, int64_t x_cols, int64_t start, int64_t length, float* out,
                  cudaStream_t stream);

// ---------------------------------------------------------------------------------
// KV cache and attention
// ---------------------------------------------------------------------------------

// A KV cache: [capacity, width] of `dtype`, rows `row_stride` elements apart. For a
// layer with n_kv_heads heads of head_dim, width = n_kv_heads * head_dim and kv head h
// holds columns [h * head_dim, (h + 1) * head_dim).
struct KvCacheLayout {
  Dtype dtype = Dtype::kF32;
  int64_t capacity = 0;
  int64_t width = 0;
  int64_t row_stride = 0;
};

// One sequence: cache rows [positions[0], positions[0] + seq) = narrow(fresh rows),
// fresh [seq, cache.width] f32 (row stride fresh_stride), positions [seq] i32.
// Row r goes to cache row positions[r]; a row whose position is outside
// [0, capacity) records kKvAppendPositionOutOfRange, one whose position is not
// positions[0] + r records kKvAppendNotConsecutive; either is not written.
cudaError_t kv_append(void* cache, const KvCacheLayout& layout, const float* fresh, int64_t fresh_stride, int64_t seq,
                      const int32_t* positions, DeviceError* error, cudaStream_t stream);
// B sessions, one new row each: row positions[b] of caches[b] = narrow(fresh row b).
// `caches` is a HOST array of B device pointers (all caches of `layout`); they travel
// to the kernel as launch parameters, kMaxSessionsPerLaunch per launch, so nothing is
// uploaded. A position outside [0, capacity) records kKvAppendPositionOutOfRange and
// that row is skipped.
inline constexpr int64_t kMaxSessionsPerLaunch = 128;
cudaError_t kv_append_batched(void* const* caches, const KvCacheLayout& layout, const float* fresh,
                              int64_t fresh_stride, int64_t batch, const int32_t* positions, DeviceError* error,
                              cudaStream_t stream);

// Shapes of one attention op. Query head h reads kv head h / (n_heads / n_kv_heads).
struct AttentionShape {
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;  // divides n_heads
  int64_t head_dim = 0;    // 1 .. kMaxAttentionHeadDim
  float scale = 1.0f;      // multiplies q . k
  int64_t q_stride = 0;    // q rows, elements
  int64_t out_stride = 0;  // out rows, elements
};
inline constexpr int64_t kMaxAttentionHeadDim = 256;

// Split-K ("flash-decoding") attention, exact f32 arithmetic on widened cache values.
// Query row r (q [rows, n_heads * head_dim] f32) sits at position positions[r] and
// attends over its cache's rows [0, positions[r]] (inclusive, causal), out [rows,
// n_heads * head_dim] f32. A position outside [0, capacity) records
// kAttentionPositionOutOfRange and leaves that row unwritten.
//
// Work: one 128-thread block per (row, kv head's group of up to 4 query heads, key
// chunk); the keys are cut so that a full cache gives about 128 blocks per SM (chunks of
// at least 128 keys, at most kMaxDecodeChunks), partial max / sum / weighted V go to
// `workspace` and a second kernel combines them; with one chunk the block writes `out`
// directly. Blocks whose chunk lies past a row's position exit at once. K and V rows
// are read with 16-byte loads when
// `head_dim * dtype size`, the row stride and the cache pointers allow (see the .cu).
//
// `workspace` must hold attention_decode_workspace_bytes(rows, ...) bytes (0: none
// needed, may be null); it is scratch owned by the caller, free again once the stream
// has passed this launch.
inline constexpr int64_t kMaxDecodeChunks = 64;
size_t attention_decode_workspace_bytes(int64_t rows, const AttentionShape& shape, const KvCacheLayout& layout,
                                        int sm_count);

// One sequence (the attention op): rows are consecutive positions of one session,
// caches k_cache / v_cache. A row whose position is not positions[0] + r records
// kAttentionNotConsecutive (and is still computed at its own position).
cudaError_t attention_decode(const float* q, const void* k_cache, const void* v_cache, const KvCacheLayout& layout,
                             const int32_t* positions, int64_t rows, const AttentionShape& shape, float* out,
                             void* workspace, int sm_count, DeviceError* error, cudaStream_t stream);

// B sessions, one query row each (a batched decode step): row b attends over
// k_caches[b] / v_caches[b] (HOST arrays of B device pointers, every cache of
// `layout`; passed as launch parameters, kMaxSessionsPerLaunch sessions per launch) at
// positions[b]; ragged lengths are fine. `workspace` must hold
// attention_decode_batched_workspace_bytes(batch, ...) bytes.
size_t attention_decode_batched_workspace_bytes(int64_t batch, const AttentionShape& shape,
                                                const KvCacheLayout& layout, int sm_count);
cudaError_t attention_decode_batched(const float* q, const void* const* k_caches, const void* const* v_caches,
                                     const KvCacheLayout& layout, const int32_t* positions, int64_t batch,
                                     const AttentionShape& shape, float* out, void* workspace, int sm_count,
                                     DeviceError* error, cudaStream_t stream);

// Prefill attention of one sequence on tensor cores (flash attention, mma.sync with
// f16 / bf16 operands, f32 accumulation): q is rounded to the cache dtype, the
// probabilities too before the P.V product. Rows as attention_decode (positions[0] is
// `past`; row i sees keys [0, past + i]); if past < 0 or past + rows > capacity every
// row records kAttentionPositionOutOfRange and nothing is written.
// Supported when attention_prefill_supported(...) (16-bit cache, head_dim 64 or 128,
// 16-byte aligned cache pointers and row stride); needs no workspace.
bool attention_prefill_supported(const void* k_cache, const void* v_cache, const KvCacheLayout& layout,
                                 const AttentionShape& shape);
cudaError_t attention_prefill(const float* q, const void* k_cache, const void* v_cache, const KvCacheLayout& layout,
                              const int32_t* positions, int64_t rows, const AttentionShape& shape, float* out,
                              DeviceError* error, cudaStream_t stream);

}  // namespace djinn::gpu
