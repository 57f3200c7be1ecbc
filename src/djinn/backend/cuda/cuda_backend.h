// CudaBackend: runs the op table on CUDA device 0 (kernels in cuda_kernels.h, GEMMs
// through cuBLAS). Built only with DJINN_CUDA; construct it through make_backend,
// which first checks that a device exists (CudaBackend::create assumes one).
//
// Streams: one non-blocking compute stream (every run_op, zero, copy(kCompute)), and
// one stream each for copy(kSwapOut) and copy(kSwapIn). The swap streams are not
// ordered with the compute stream: a caller that swaps out what compute wrote calls
// synchronize() first, and swaps in before issuing the ops that read it.
//
// Errors: every CUDA / cuBLAS call is checked; a failed call becomes a Status naming
// the call and the CUDA error (out_of_memory for allocation failures, internal_error
// otherwise). run_op returns the errors knowable on the host (unsupported dtype or
// layout, bad rows range); errors in the data (token id outside the vocabulary, a
// position outside the KV cache, non-consecutive positions) are flagged by the
// kernels on the device and returned by the next synchronize(), once.
//
// Memory outside the VMU: besides what callers allocate(), the backend owns
//  - the cuBLAS workspace (kCublasWorkspaceBytes, allocated at creation);
//  - its own workspace (workspace_bytes()): split-K attention partials; and a buffer of
//    f32 activations narrowed to a 16-bit weight's dtype for the tensor-core GEMMs
//    (Note [Narrowed activations]). Both are allocated on first use and grown (never
//    shrunk) when an op needs more, so in a steady state no op allocates; growing
//    drops every captured step;
//  - a 32-byte device error record and its pinned host mirror.
#pragma once

#include <array>
#include <cstddef>
#include <tuple>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "djinn/backend/backend.h"

// Opaque CUDA handles, so that this header needs no CUDA include.
struct CUstream_st;
struct cublasContext;
struct CUgraphExec_st;
struct CUevent_st;

namespace djinn {
namespace gpu {
struct DeviceError;
enum class Dtype : int;  // cuda_kernels.h
}
class TunedGemm;

class CudaBackend final : public Backend {
 public:
  static constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

  // The backend on device 0, its streams, cuBLAS handle and error record ready.
  static Result<std::unique_ptr<CudaBackend>> create();
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  DeviceKind device() const override { return DeviceKind::kCuda; }
  Status run_op(OpKind op, const OpAttrs& attrs, std::span<const TensorView* const> inputs, const TensorView& output,
                const SymbolBindings& bindings) override;
  // cudaMalloc; an alignment above the 256 bytes cudaMalloc guarantees is met by
  // over-allocating. Returns nullptr when the device is out of memory.
  void* allocate(size_t bytes, size_t alignment) override;
  void deallocate(void* pointer) override;
  size_t free_memory_bytes() const override;
  bool host_addressable() const override { return false; }
  Status copy(std::span<const CopyRegion> regions, CopyQueue queue) override;
  // Swap copies on their own streams, ordered after the compute stream's work so far;
  // the event is a pair of timing events around them.
  bool supports_async_copy() const override { return true; }
  Result<std::shared_ptr<QueueEvent>> copy_async(std::span<const CopyRegion> regions, CopyQueue queue,
                                                 SwapUse use) override;
  Status compute_waits_for(QueueEvent& event) override;
  Status zero(void* dst, size_t bytes) override;
  Status synchronize() override;
  Status pin_host(void* pointer, size_t bytes) override;
  void unpin_host(void* pointer) override;
  // Step capture: CUDA stream capture of the compute stream (thread-local mode, so the
  // swap threads' copies are unaffected) into an instantiated graph. Growing the
  // workspace invalidates every capture (they point at the old buffer).
  bool supports_capture() const override { return !profile_.enabled; }
  Status begin_capture() override;
  Result<uint64_t> end_capture() override;
  void abort_capture() override;
  Result<bool> replay(uint64_t capture) override;
  void release_capture(uint64_t capture) override;

  // Bytes of the backend's own workspace and narrowing buffer (see above), excluding
  // the cuBLAS workspace.
  size_t workspace_bytes() const { return workspace_size_ + narrowed_size_; }
  // Swaps copy_async waited for as it issued them (Note [Waited small swaps]); read
  // from copy_async's thread.
  uint64_t swaps_waited() const { return swaps_waited_; }

 private:
  CudaBackend() = default;
  Status init();
  // The workspace, at least `bytes` long; growing it waits for the compute stream.
  Result<void*> workspace(size_t bytes);
  CUstream_st* stream_for(CopyQueue queue) const;
  // Swaps up to this size move by copy_spans (DJINN_CUDA_SPAN_COPY_MAX_MB; 0: never).
  size_t span_copy_max_bytes_ = 0;
  // Reused events of swap copies (shared: a ticket may outlive a copy's call).
  std::shared_ptr<struct CudaEventPool> event_pool_;
  // Issues the copies on `queue`'s stream without waiting.
  Status issue_copies(std::span<const CopyRegion> regions, CopyQueue queue);
  // The same, with the regions' pitched form found already (nullopt: none, or 2D off).
  Status issue_copies(std::span<const CopyRegion> regions, CopyQueue queue, const std::optional<PitchedCopy>& pitched);
  // A swap's copies on `stream`: one 2D copy, the span-copy kernel, or issue_copies.
  Status issue_swap_copies(std::span<const CopyRegion> regions, CopyQueue queue, CUstream_st* stream);
  // copy_async waits for kAhead swaps up to this size (Note [Waited small swaps], cuda_backend.cc).
  static constexpr size_t kWaitedSwapBytes = size_t{4} << 20;
  // Per swap queue (out, in): an asynchronous swap was issued there and may still run.
  // Touched only by copy_async's one thread (the executor's, see backend.h).
  bool async_swaps_pending_[2] = {false, false};
  uint64_t swaps_waited_ = 0;  // see swaps_waited()
  // Whether a swap's regions go by copy_spans (SM threads) rather than the copy engines:
  // at most span_copy_max_bytes_ in all, 16-byte aligned, the host side mapped memory.
  bool span_copy_fits(std::span<const CopyRegion> regions, CopyQueue queue) const;
  // Host memory pin_host registered (mapped, at the same address on the device: checked
  // at init through cudaDevAttrCanUseHostPointerForRegisteredMem), begin -> bytes. A
  // small swap asks this map rather than the driver: two cudaPointerGetAttributes per
  // swap were a few microseconds of a 1 MiB swap's ~30. Threads: any (the host pool
  // registers its chunks from a thread of its own).
  mutable std::mutex registered_mutex_;
  std::map<const std::byte*, size_t> registered_;
  // Whether [begin, end) lies in registered memory (one range or adjacent ones).
  bool registered(const std::byte* begin, const std::byte* end) const;

  // matmul, or matmul_add when `residual` is given.
  Status matmul(const TensorView& x, const TensorView& w, bool transpose_b, const TensorView* residual,
                const TensorView& out);
  Status gemm(const TensorView& x, const TensorView& w, gpu::Dtype w_dtype, bool transpose_b, const TensorView& out);
  Status attention(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                   const TensorView& positions, const OpAttrs& attrs, const TensorView& out);
  Status batched_decode_attention(const TensorView& q, const TensorView& k_new, const TensorView& v_new,
                                  const TensorView& positions, std::span<const TensorView* const> caches,
                                  const OpAttrs& attrs, const TensorView& out);
  Status copy_rows(const TensorView& x, int64_t start, int64_t length, const TensorView& out);
  Status dispatch_op(OpKind op, const OpAttrs& attrs, std::span<const TensorView* const> inputs, const TensorView& output);

  // Per-op GPU time (DJINN_CUDA_OP_PROFILE=1, e.g. for bench decode): every op is
  // bracketed by two events on the compute stream, the times are summed by op kind at
  // each synchronize(), and the totals are printed on stderr when the backend goes. Steps
  // are then not captured (events inside a graph cannot be timed this way).
  struct OpProfile {
    bool enabled = false;
    std::vector<std::tuple<OpKind, CUevent_st*, CUevent_st*>> pending;  // issued, not yet read
    std::vector<CUevent_st*> spare;
    std::array<double, kNumOps> ms{};
    std::array<uint64_t, kNumOps> count{};
  };
  OpProfile profile_;
  CUevent_st* profile_event();
  void collect_profile();
  void log_profile() const;

  int sm_count_ = 0;
  bool gemv_enabled_ = true;  // gpu::gemv for decode-shaped 16-bit products (DJINN_CUDA_GEMV)
  bool copy_2d_ = true;       // pitched region lists as one cudaMemcpy2DAsync (DJINN_CUDA_COPY_2D)
  CUstream_st* compute_ = nullptr;
  CUstream_st* swap_out_ = nullptr;
  CUstream_st* swap_in_ = nullptr;
  cublasContext* cublas_ = nullptr;
  // 16-bit GEMMs through cuBLASLt with tuned algorithms (tuned_gemm.h); null when
  // DJINN_CUBLASLT=0 (then cublasGemmEx with cuBLAS's default choice).
  std::unique_ptr<TunedGemm> tuned_gemm_;
  void* cublas_workspace_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_size_ = 0;
  gpu::DeviceError* error_ = nullptr;       // device
  gpu::DeviceError* error_host_ = nullptr;  // pinned host mirror, read after a sync
  // batched_decode_attention's cache pointers (host arrays, reused across steps).
  std::vector<void*> batch_k_caches_, batch_v_caches_;

  // Note [Narrowed activations]: a 16-bit GEMM reads x narrowed to the weight's dtype.
  // Consecutive GEMMs of one input (q / k / v projections, gate / up) narrow it once:
  // narrowed_ holds the narrowed copy of `narrowed_source_`, valid until anything may
  // have written the source — an op whose output overlaps it (or that writes KV caches
  // besides its output), a compute-queue copy() or zero(), a capture boundary or a
  // replay. Compute thread only.
  struct NarrowedSource {
    const std::byte* data = nullptr;
    size_t bytes = 0;  // of the f32 source
    int dtype = -1;    // gpu::Dtype of the narrowed copy; -1: nothing valid
  };
  NarrowedSource narrowed_source_;
  void* narrowed_ = nullptr;
  size_t narrowed_size_ = 0;
  Result<void*> narrowed_buffer(size_t bytes);
  Result<void*> grow(void*& buffer, size_t& size, size_t bytes, const char* what);
  void forget_narrowed() { narrowed_source_ = {}; }
  void forget_narrowed_if_written(const TensorView& out);

  // Captured steps by id (graph executables); dropped when the workspace moves.
  std::map<uint64_t, CUgraphExec_st*> captures_;
  uint64_t next_capture_id_ = 1;
  bool capturing_ = false;
  void drop_captures();

  // allocate()'s over-aligned blocks: aligned pointer -> what cudaMalloc returned.
  std::mutex over_aligned_mutex_;
  std::map<void*, void*> over_aligned_;
};

}  // namespace djinn
