#include "djinn/backend/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <string_view>
#include <vector>

#include "djinn/backend/cuda/cuda_kernels.h"
#include "djinn/backend/cuda/cuda_status.h"
#include "djinn/backend/cuda/tuned_gemm.h"

namespace djinn {
namespace {

// Query rows up to which attention takes the split-K decode kernel even when the
// tensor-core prefill kernel could run (it needs 64 rows to fill a block).
constexpr int64_t kMaxDecodeRows = 8;

std::optional<gpu::Dtype> storage_dtype(DType dtype) {
  switch (dtype) {
    case DType::kF32: return gpu::Dtype::kF32;
    case DType::kF16: return gpu::Dtype::kF16;
    case DType::kBF16: return gpu::Dtype::kBF16;
    case DType::kI32:
    case DType::kI64: return std::nullopt;
  }
  return std::nullopt;
}

// Row-major and dense (what the kernels index); views from the executor always are.
bool dense(const TensorView& t) {
  if (t.rank() == 1) return t.strides[0] == 1;
  if (t.rank() == 2) return t.strides[1] == 1 && t.strides[0] == t.shape[1];
  return t.is_contiguous();
}

Status unsupported(OpKind op, const TensorView& t, std::string_view what) {
  return unimplemented(
      fmt::format("cuda {}: {} ({} {}) is not supported", op_name(op), what, dtype_name(t.dtype), to_string(t.shape)));
}

// `t` is dense and of dtype f32 (an activation).
Status check_f32(OpKind op, const TensorView& t, std::string_view what) {
  if (t.dtype != DType::kF32) return unsupported(op, t, fmt::format("{} must be f32", what));
  if (!dense(t)) return unsupported(op, t, fmt::format("{} must be dense row-major", what));
  return {};
}

// `t` is dense, of a floating storage dtype (weights, caches).
Result<gpu::Dtype> check_storage(OpKind op, const TensorView& t, std::string_view what) {
  const std::optional<gpu::Dtype> dtype = storage_dtype(t.dtype);
  if (!dtype) return unsupported(op, t, fmt::format("{} must be f32, f16 or bf16", what));
  if (!dense(t)) return unsupported(op, t, fmt::format("{} must be dense row-major", what));
  return *dtype;
}

Status check_positions(OpKind op, const TensorView& t) {
  if (t.dtype != DType::kI32 || t.rank() != 1 || !dense(t)) return unsupported(op, t, "positions must be dense i32[rows]");
  return {};
}

// The Status for a data error a kernel recorded.
Status device_error_status(const gpu::DeviceError& e) {
  const int64_t a = e.values[0], b = e.values[1], c = e.values[2];
  switch (e.code) {
    case gpu::kEmbeddingIdOutOfRange:
      return out_of_range(fmt::format("embedding: token id {} at row {} is outside the vocabulary [0, {})", a, b, c));
    case gpu::kRopeNegativePosition: return out_of_range(fmt::format("rope: negative position {} at row {}", a, b));
    case gpu::kKvAppendPositionOutOfRange:
      return out_of_range(fmt::format("kv_append: row {} at position {} is outside the kv cache [0, {}) (cache full?)",
                                      b, a, c));
    case gpu::kKvAppendNotConsecutive:
      return invalid_argument(
          fmt::format("kv_append: positions must be consecutive: row {} is at position {} after {}", b, a, c));
    case gpu::kAttentionPositionOutOfRange:
      return out_of_range(fmt::format("attention: row {} at position {} is outside the kv capacity [0, {})", b, a, c));
    case gpu::kAttentionNotConsecutive:
      return invalid_argument(
          fmt::format("attention: positions must be consecutive: row {} is at position {} after {}", b, a, c));
    default: return internal_error(fmt::format("cuda kernel reported unknown error code {}", e.code));
  }
}

}  // namespace

Result<std::unique_ptr<CudaBackend>> CudaBackend::create() {
  std::unique_ptr<CudaBackend> backend(new CudaBackend());
  DJINN_RETURN_IF_ERROR(backend->init());
  return backend;
}

Status CudaBackend::init() {
  DJINN_CUDA_RETURN_IF_ERROR(cudaSetDevice(0));
  if (const char* env = std::getenv("DJINN_CUDA_OP_PROFILE"); env != nullptr && std::string_view(env) == "1")
    profile_.enabled = true;
  DJINN_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sm_count_, cudaDevAttrMultiProcessorCount, 0));
  int host_pointers = 0;
  DJINN_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&host_pointers, cudaDevAttrCanUseHostPointerForRegisteredMem, 0));
  // Measured on an H100 (bench swap, 24 slot runs): SM copies moved 1 MiB at 69-74 % of
  // one contiguous cudaMemcpyAsync and 4 MiB at 83 %, the copy engines 49-51 % and
  // 74-76 %; from 16 MiB on the copy engines are as fast or faster. Equal slots at a
  // constant stride (a session's) go as one 2D copy before either: 1 MiB at 77-84 %,
  // 4 MiB at 91-94 % (the same runs without it: 65-73 % and 81-85 %).
  span_copy_max_bytes_ = host_pointers != 0 ? size_t{4} << 20 : 0;
  if (const char* env = std::getenv("DJINN_CUDA_SPAN_COPY_MAX_MB"); env != nullptr && host_pointers != 0)
    span_copy_max_bytes_ = static_cast<size_t>(std::max(0.0, std::atof(env)) * (1 << 20));
  // DJINN_CUDA_COPY_2D=0: a session's KV slots move as a batch of copies (or by the
  // span-copy kernel) instead of one 2D copy.
  if (const char* env = std::getenv("DJINN_CUDA_COPY_2D"); env != nullptr && std::string_view(env) == "0")
    copy_2d_ = false;
  // DJINN_CUDA_GEMV=0: decode products through cuBLAS too (the baseline of the GEMV).
  if (const char* env = std::getenv("DJINN_CUDA_GEMV"); env != nullptr && std::string_view(env) == "0")
    gemv_enabled_ = false;
  // DJINN_CUDA_PDL=0: kernels launched the plain way (Note [Programmatic dependent
  // launch] in cuda_common.cuh); process-wide, as the latest backend made says.
  {
    const char* env = std::getenv("DJINN_CUDA_PDL");
    gpu::set_programmatic_launch((env == nullptr || std::string_view(env) != "0") && gpu::kernels_await_prior_grids());
  }
  event_pool_ = std::make_shared<CudaEventPool>();
  DJINN_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&compute_, cudaStreamNonBlocking));
  DJINN_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&swap_out_, cudaStreamNonBlocking));
  DJINN_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&swap_in_, cudaStreamNonBlocking));
  DJINN_CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&error_), sizeof(gpu::DeviceError)));
  DJINN_CUDA_RETURN_IF_ERROR(cudaMemset(error_, 0, sizeof(gpu::DeviceError)));
  DJINN_CUDA_RETURN_IF_ERROR(cudaMallocHost(reinterpret_cast<void**>(&error_host_), sizeof(gpu::DeviceError)));
  *error_host_ = gpu::DeviceError{};
  DJINN_CUDA_RETURN_IF_ERROR(cudaMalloc(&cublas_workspace_, kCublasWorkspaceBytes));
  DJINN_CUBLAS_RETURN_IF_ERROR(cublasCreate(&cublas_));
  // cublasSetStream resets the workspace to cuBLAS's own pool: set the stream first.
  DJINN_CUBLAS_RETURN_IF_ERROR(cublasSetStream(cublas_, compute_));
  DJINN_CUBLAS_RETURN_IF_ERROR(cublasSetWorkspace(cublas_, cublas_workspace_, kCublasWorkspaceBytes));
  if (const char* env = std::getenv("DJINN_CUBLASLT"); env == nullptr || std::string_view(env) != "0") {
    tuned_gemm_ = std::make_unique<TunedGemm>();
    // cuBLAS and cuBLASLt share the workspace: both run in the compute stream's order.
    DJINN_RETURN_IF_ERROR(tuned_gemm_->init(cublas_workspace_, kCublasWorkspaceBytes));
  }
  // f32 GEMMs stay f32 (no TF32): the golden tests hold logits to 1e-3.
  DJINN_CUBLAS_RETURN_IF_ERROR(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
  DJINN_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());  // the memset is done before any stream runs
  return {};
}

CudaBackend::~CudaBackend() {
  // Nothing may be in flight on what is freed below. Failures here can only be logged.
  auto check = [](cudaError_t error, const char* what) {
    if (error != cudaSuccess) spdlog::warn("cuda backend teardown: {}: {}", what, cudaGetErrorString(error));
  };
  for (CUstream_st* stream : {compute_, swap_out_, swap_in_})
    if (stream != nullptr) check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  drop_captures();
  if (profile_.enabled) {
    collect_profile();
    log_profile();
    for (CUevent_st* event : profile_.spare) check(cudaEventDestroy(event), "cudaEventDestroy");
  }
  tuned_gemm_.reset();
  if (cublas_ != nullptr && cublasDestroy(cublas_) != CUBLAS_STATUS_SUCCESS)
    spdlog::warn("cuda backend teardown: cublasDestroy failed");
  if (cublas_workspace_ != nullptr) check(cudaFree(cublas_workspace_), "cudaFree(cublas workspace)");
  if (workspace_ != nullptr) check(cudaFree(workspace_), "cudaFree(workspace)");
  if (narrowed_ != nullptr) check(cudaFree(narrowed_), "cudaFree(narrowed activations)");
  if (error_ != nullptr) check(cudaFree(error_), "cudaFree(error record)");
  if (error_host_ != nullptr) check(cudaFreeHost(error_host_), "cudaFreeHost(error record)");
  for (CUstream_st* stream : {compute_, swap_out_, swap_in_})
    if (stream != nullptr) check(cudaStreamDestroy(stream), "cudaStreamDestroy");
}

// ---------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------

void* CudaBackend::allocate(size_t bytes, size_t alignment) {
  constexpr size_t kMallocAlignment = 256;  // what cudaMalloc guarantees
  if (bytes == 0) bytes = 1;
  if (alignment <= kMallocAlignment) {
    void* pointer = nullptr;
    return cudaMalloc(&pointer, bytes) == cudaSuccess ? pointer : nullptr;
  }
  void* raw = nullptr;
  if (cudaMalloc(&raw, bytes + alignment - kMallocAlignment) != cudaSuccess) return nullptr;
  const uintptr_t address = reinterpret_cast<uintptr_t>(raw);
  void* aligned = reinterpret_cast<void*>((address + alignment - 1) / alignment * alignment);
  if (aligned != raw) {
    const std::lock_guard<std::mutex> lock(over_aligned_mutex_);
    over_aligned_[aligned] = raw;
  }
  return aligned;
}

void CudaBackend::deallocate(void* pointer) {
  if (pointer == nullptr) return;
  {
    const std::lock_guard<std::mutex> lock(over_aligned_mutex_);
    const auto it = over_aligned_.find(pointer);
    if (it != over_aligned_.end()) {
      pointer = it->second;
      over_aligned_.erase(it);
    }
  }
  const cudaError_t error = cudaFree(pointer);
  if (error != cudaSuccess) spdlog::warn("cuda backend: cudaFree failed: {}", cudaGetErrorString(error));
}

size_t CudaBackend::free_memory_bytes() const {
  size_t free_bytes = 0, total_bytes = 0;
  if (cudaMemGetInfo(&free_bytes, &total_bytes) != cudaSuccess) return 0;
  return free_bytes;
}

CUstream_st* CudaBackend::stream_for(CopyQueue queue) const {
  switch (queue) {
    case CopyQueue::kCompute: return compute_;
    case CopyQueue::kSwapOut: return swap_out_;
    case CopyQueue::kSwapIn: return swap_in_;
  }
  return compute_;
}

Status CudaBackend::issue_copies(std::span<const CopyRegion> regions, CopyQueue queue) {
  return issue_copies(regions, queue, copy_2d_ ? as_pitched_copy(regions) : std::nullopt);
}

Status CudaBackend::issue_copies(std::span<const CopyRegion> regions, CopyQueue queue,
                                 const std::optional<PitchedCopy>& pitched) {
  cudaStream_t stream = stream_for(queue);
  // A session's KV slots (equal runs at a constant stride) to or from one slice: one
  // 2D copy, which the copy engine moves as fast as a contiguous one.
  if (pitched) {
    if (cudaMemcpy2DAsync(pitched->dst, pitched->dst_pitch, pitched->src, pitched->src_pitch, pitched->width,
                          pitched->height, cudaMemcpyDefault, stream) == cudaSuccess)
      return {};
    (void)cudaGetLastError();  // refused (a pitch beyond the device's limit): the copies below
  }
  // Several regions (a swap moves every KV slot's used rows): one batched call, so the
  // driver can keep the copy engine busy instead of paying a call per region. Where
  // the batch call is refused (an older driver), one cudaMemcpyAsync per region.
  std::vector<void*> dsts;
  std::vector<const void*> srcs;
  std::vector<size_t> sizes;
  for (const CopyRegion& r : regions)
    if (r.bytes > 0) {
      dsts.push_back(r.dst);
      srcs.push_back(r.src);
      sizes.push_back(r.bytes);
    }
  bool batched = false;
  if (dsts.size() > 1) {
    cudaMemcpyAttributes attributes{};
    attributes.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
    attributes.flags = queue == CopyQueue::kCompute ? cudaMemcpyFlagDefault : cudaMemcpyFlagPreferOverlapWithCompute;
    size_t first = 0;
    batched = cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), dsts.size(), &attributes, &first, 1,
                                   stream) == cudaSuccess;
    if (!batched) (void)cudaGetLastError();
  }
  if (!batched)
    for (size_t i = 0; i < dsts.size(); ++i)
      DJINN_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dsts[i], srcs[i], sizes[i], cudaMemcpyDefault, stream));
  return {};
}

Status CudaBackend::copy(std::span<const CopyRegion> regions, CopyQueue queue) {
  // A compute-queue copy may write a narrowed GEMM input's source. Swap copies write
  // only arenas and host memory, never an activation (and run on other threads).
  if (queue == CopyQueue::kCompute) forget_narrowed();
  DJINN_RETURN_IF_ERROR(issue_copies(regions, queue));
  DJINN_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_for(queue)));
  return {};
}

// Events for swap copies, reused: creating and destroying three per swap cost more
// than a small swap's copy (each call is a few microseconds). Re-recording an event
// is safe once every wait on it has been issued (cudaStreamWaitEvent takes the record
// current at the call). Threads: any.
struct CudaEventPool {
  std::mutex mutex;
  std::vector<cudaEvent_t> free[2];  // [timing enabled]
  ~CudaEventPool() {
    for (auto& list : free)
      for (cudaEvent_t e : list) (void)cudaEventDestroy(e);
  }
  Result<cudaEvent_t> take(bool timing) {
    {
      std::lock_guard lock(mutex);
      if (!free[timing].empty()) {
        cudaEvent_t e = free[timing].back();
        free[timing].pop_back();
        return e;
      }
    }
    cudaEvent_t e = nullptr;
    DJINN_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming));
    return e;
  }
  void give(cudaEvent_t e, bool timing) {
    std::lock_guard lock(mutex);
    free[timing].push_back(e);
  }
};

namespace {

// The end of an asynchronous copy: two timing events on its stream around the copies,
// back to the pool when the ticket is gone.
class CudaCopyEvent final : public QueueEvent {
 public:
  CudaCopyEvent(std::shared_ptr<CudaEventPool> pool, cudaEvent_t start, cudaEvent_t end)
      : pool_(std::move(pool)), start_(start), end_(end) {}
  ~CudaCopyEvent() override {
    pool_->give(start_, true);
    pool_->give(end_, true);
  }
  bool done() override {
    const cudaError_t e = cudaEventQuery(end_);
    if (e == cudaErrorNotReady) return false;
    if (e != cudaSuccess) (void)cudaGetLastError();  // wait() reports it
    return true;
  }
  Status wait() override {
    DJINN_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(end_));
    return {};
  }
  double elapsed_seconds() override {
    float ms = 0;
    if (cudaEventElapsedTime(&ms, start_, end_) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return ms / 1e3;
  }
  cudaEvent_t end() const { return end_; }

 private:
  std::shared_ptr<CudaEventPool> pool_;
  cudaEvent_t start_, end_;
};

// A copy that was waited for where it was issued (Note [Waited small swaps]): done,
// timed by the host clock.
class FinishedCopy final : public QueueEvent {
 public:
  explicit FinishedCopy(double seconds) : seconds_(seconds) {}
  bool done() override { return true; }
  Status wait() override { return {}; }
  double elapsed_seconds() override { return seconds_; }

 private:
  double seconds_;
};

}  // namespace

Result<std::shared_ptr<QueueEvent>> CudaBackend::copy_async(std::span<const CopyRegion> regions, CopyQueue queue,
                                                            SwapUse use) {
  if (queue == CopyQueue::kCompute) return invalid_argument("copy_async takes a swap queue, not the compute queue");
  if (capturing_) return invalid_argument("copy_async while a step is being captured (swaps go between steps)");
  cudaStream_t stream = stream_for(queue);
  // Ordered after the compute stream's work so far: the bytes were last written there
  // (a swap-out's KV), or their destination was last read there (a swap-in's arena).
  // (Nothing to order after when the compute stream is idle: one query instead of two
  // calls, which a small swap notices.)
  const cudaError_t idle = cudaStreamQuery(compute_);
  if (idle != cudaSuccess && idle != cudaErrorNotReady) return cuda_status(idle, "cudaStreamQuery(compute_)");
  if (idle == cudaErrorNotReady) {
    DJINN_ASSIGN_OR_RETURN(cudaEvent_t after_compute, event_pool_->take(false));
    cudaError_t ordered = cudaEventRecord(after_compute, compute_);
    const char* failed_call = "cudaEventRecord(after_compute, compute_)";
    if (ordered == cudaSuccess) {
      ordered = cudaStreamWaitEvent(stream, after_compute, 0);
      failed_call = "cudaStreamWaitEvent(swap stream, after_compute)";
    }
    event_pool_->give(after_compute, false);  // the wait is issued: free to record again
    if (ordered != cudaSuccess) return cuda_status(ordered, failed_call);
  }
  // Note [Waited small swaps]: a swap's completion is tracked by two timing events
  // around its copies. Measured on an H100 (bench swap, 1 MiB as 24 slots): recording
  // them and reading their time cost ~3 µs of host time, and the swap took 32 µs against
  // 27 for one pinned cudaMemcpyAsync of the same bytes. A swap of at most
  // kWaitedSwapBytes is therefore waited for right here, on an untimed event, and timed
  // by the host clock (its copy then takes ~25-85 µs of this thread). Only when nothing
  // is ahead of it, on the compute stream or its own: the wait must never be for a
  // step or for an earlier large swap. And only for a kAhead swap: a swap-in that a
  // step follows (kStepFollows) goes on the device like any large swap, the step
  // queued behind it (compute_waits_for) and the host free, for the price of the timing
  // events (H100, 1 MiB timed: 86-89 % of the raw copy, against 93-97 % waited).
  size_t total = 0;
  for (const CopyRegion& r : regions) total += r.bytes;
  bool& swaps_pending = async_swaps_pending_[queue == CopyQueue::kSwapOut ? 0 : 1];
  if (use == SwapUse::kAhead && swaps_pending && total <= kWaitedSwapBytes) {
    const cudaError_t queued = cudaStreamQuery(stream);
    if (queued != cudaSuccess && queued != cudaErrorNotReady) (void)cudaGetLastError();  // the async path reports it
    swaps_pending = queued != cudaSuccess;
  }
  if (use == SwapUse::kAhead && idle == cudaSuccess && !swaps_pending && total <= kWaitedSwapBytes) {
    const auto issued = std::chrono::steady_clock::now();
    DJINN_ASSIGN_OR_RETURN(cudaEvent_t end, event_pool_->take(false));
    Status copied = issue_swap_copies(regions, queue, stream);
    if (copied.ok()) {
      if (const cudaError_t recorded = cudaEventRecord(end, stream); recorded != cudaSuccess)
        copied = cuda_status(recorded, "cudaEventRecord(end, swap stream)");
      else if (const cudaError_t finished = cudaEventSynchronize(end); finished != cudaSuccess)
        copied = cuda_status(finished, "cudaEventSynchronize(end)");
    }
    if (!copied.ok()) (void)cudaStreamSynchronize(stream);  // nothing of it may still run (see below)
    event_pool_->give(end, false);
    DJINN_RETURN_IF_ERROR(copied);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - issued).count();
    ++swaps_waited_;
    return std::shared_ptr<QueueEvent>(std::make_shared<FinishedCopy>(seconds));
  }
  DJINN_ASSIGN_OR_RETURN(cudaEvent_t start, event_pool_->take(true));
  Result<cudaEvent_t> end = event_pool_->take(true);
  if (!end.ok()) {
    event_pool_->give(start, true);
    return end.status();
  }
  auto event = std::make_shared<CudaCopyEvent>(event_pool_, start, *end);  // gives both back when gone
  swaps_pending = true;
  DJINN_CUDA_RETURN_IF_ERROR(cudaEventRecord(start, stream));
  auto issue = [&]() -> Status {
    DJINN_RETURN_IF_ERROR(issue_swap_copies(regions, queue, stream));
    DJINN_CUDA_RETURN_IF_ERROR(cudaEventRecord(*end, stream));
    return {};
  };
  if (Status issued = issue(); !issued.ok()) {
    // Copies issued before the failure may still run: the caller frees their memory
    // when it sees the error, so they must be finished first.
    (void)cudaStreamSynchronize(stream);
    return issued;
  }
  return std::shared_ptr<QueueEvent>(std::move(event));
}

// One 2D copy, the span-copy kernel, or a batch of copies (issue_copies), on `stream`.
Status CudaBackend::issue_swap_copies(std::span<const CopyRegion> regions, CopyQueue queue, CUstream_st* stream) {
  const std::optional<PitchedCopy> pitched = copy_2d_ ? as_pitched_copy(regions) : std::nullopt;
  if (!pitched && span_copy_fits(regions, queue)) {
    gpu::SpanCopyTable table{};
    for (const CopyRegion& r : regions)
      if (r.bytes > 0) table.spans[table.count++] = gpu::SpanCopy{r.src, r.dst, r.bytes};
    DJINN_CUDA_RETURN_IF_ERROR(gpu::copy_spans(table, stream));
    return {};
  }
  return issue_copies(regions, queue, pitched);
}

bool CudaBackend::span_copy_fits(std::span<const CopyRegion> regions, CopyQueue queue) const {
  size_t total = 0, count = 0;
  const std::byte *host_low = nullptr, *host_high = nullptr;
  for (const CopyRegion& r : regions) {
    if (r.bytes == 0) continue;
    total += r.bytes;
    ++count;
    if ((reinterpret_cast<uintptr_t>(r.dst) | reinterpret_cast<uintptr_t>(r.src) | r.bytes) % 16 != 0) return false;
    const auto* host = static_cast<const std::byte*>(queue == CopyQueue::kSwapOut ? r.dst : r.src);
    host_low = host_low == nullptr ? host : std::min(host_low, host);
    host_high = std::max(host_high, host + r.bytes - 1);
  }
  if (count == 0 || count > static_cast<size_t>(gpu::kMaxSpanCopies) || total > span_copy_max_bytes_) return false;
  // The host side must be registered (pinned and mapped) memory throughout.
  return registered(host_low, host_high + 1);
}

bool CudaBackend::registered(const std::byte* begin, const std::byte* end) const {
  std::lock_guard lock(registered_mutex_);
  auto it = registered_.upper_bound(begin);
  if (it == registered_.begin()) return false;
  --it;  // the last range that starts at or before `begin`
  const std::byte* covered = it->first + it->second;
  if (covered <= begin) return false;
  while (covered < end) {  // adjacent ranges (a pool registered chunk by chunk) continue it
    ++it;
    if (it == registered_.end() || it->first != covered) return false;
    covered = it->first + it->second;
  }
  return true;
}

Status CudaBackend::compute_waits_for(QueueEvent& event) {
  auto* copy = dynamic_cast<CudaCopyEvent*>(&event);
  if (copy == nullptr) return event.wait();  // not one of ours: wait on the host
  DJINN_CUDA_RETURN_IF_ERROR(cudaStreamWaitEvent(compute_, copy->end(), 0));
  return {};
}

Status CudaBackend::zero(void* dst, size_t bytes) {
  forget_narrowed();
  if (bytes > 0) DJINN_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(dst, 0, bytes, compute_));
  return {};
}

Status CudaBackend::synchronize() {
  DJINN_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(error_host_, error_, sizeof(gpu::DeviceError), cudaMemcpyDeviceToHost, compute_));
  DJINN_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(compute_));
  if (profile_.enabled) collect_profile();
  if (error_host_->code == gpu::kNoDeviceError) return {};
  const gpu::DeviceError recorded = *error_host_;
  *error_host_ = gpu::DeviceError{};
  // Ordered before every later kernel on the compute stream.
  DJINN_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(error_, 0, sizeof(gpu::DeviceError), compute_));
  return device_error_status(recorded);
}

Status CudaBackend::pin_host(void* pointer, size_t bytes) {
  if (bytes == 0) return {};
  // Mapped: small swaps move these bytes with SM loads and stores (copy_spans).
  DJINN_CUDA_RETURN_IF_ERROR(cudaHostRegister(pointer, bytes, cudaHostRegisterMapped | cudaHostRegisterPortable));
  std::lock_guard lock(registered_mutex_);
  registered_[static_cast<const std::byte*>(pointer)] = bytes;
  return {};
}

void CudaBackend::unpin_host(void* pointer) {
  {
    std::lock_guard lock(registered_mutex_);
    registered_.erase(static_cast<const std::byte*>(pointer));
  }
  const cudaError_t error = cudaHostUnregister(pointer);
  if (error != cudaSuccess) spdlog::warn("cuda backend: cudaHostUnregister failed: {}", cudaGetErrorString(error));
}

// Grows one of the backend's buffers to at least `bytes` (1 MiB granules). Growing
// inside a capture would bake a buffer about to be freed into the graph (and the
// synchronize below is illegal there): it fails the capture instead; the caller runs
// the step uncaptured, which grows the buffer. Every capture points at the old buffer:
// all are dropped.
Result<void*> CudaBackend::grow(void*& buffer, size_t& size, size_t bytes, const char* what) {
  if (bytes <= size) return buffer;
  if (capturing_) return unavailable(fmt::format("cuda backend: the {} must grow; not during a capture", what));
  drop_captures();
  forget_narrowed();
  DJINN_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(compute_));  // kernels may still use the old buffer
  if (buffer != nullptr) DJINN_CUDA_RETURN_IF_ERROR(cudaFree(buffer));
  buffer = nullptr;
  size = 0;
  constexpr size_t kGranule = size_t{1} << 20;
  const size_t rounded = (bytes + kGranule - 1) / kGranule * kGranule;
  DJINN_CUDA_RETURN_IF_ERROR(cudaMalloc(&buffer, rounded));
  size = rounded;
  return buffer;
}

Result<void*> CudaBackend::narrowed_buffer(size_t bytes) {
  return grow(narrowed_, narrowed_size_, bytes, "narrowing buffer");
}

Result<void*> CudaBackend::workspace(size_t bytes) { return grow(workspace_, workspace_size_, bytes, "workspace"); }

void CudaBackend::forget_narrowed_if_written(const TensorView& out) {
  if (narrowed_source_.dtype < 0) return;
  const auto* begin = static_cast<const std::byte*>(out.data);
  const std::byte* end = begin + out.nbytes();
  if (begin < narrowed_source_.data + narrowed_source_.bytes && narrowed_source_.data < end) forget_narrowed();
}

// ---------------------------------------------------------------------------------
// Ops
// ---------------------------------------------------------------------------------

Status CudaBackend::matmul(const TensorView& x, const TensorView& w, bool transpose_b, const TensorView* residual,
                           const TensorView& out) {
  const OpKind op = residual != nullptr ? OpKind::kMatMulAdd : OpKind::kMatMul;
  DJINN_RETURN_IF_ERROR(check_f32(op, x, "x"));
  DJINN_RETURN_IF_ERROR(check_f32(op, out, "out"));
  if (residual != nullptr) DJINN_RETURN_IF_ERROR(check_f32(op, *residual, "residual"));
  DJINN_ASSIGN_OR_RETURN(const gpu::Dtype w_dtype, check_storage(op, w, "w"));
  const int64_t m = x.dim(0), k = x.dim(1), n = out.dim(1);
  if (m == 0 || n == 0) return {};
  if (m > INT_MAX || n > INT_MAX || k > INT_MAX) return unsupported(op, x, "dimensions beyond 2^31");
  // A decode step's few rows against nn.Linear weights: the GEMV kernel, which rounds
  // x itself (no narrowing kernel), streams the weight faster than cuBLAS does and adds
  // the residual as it writes.
  if (k > 0 && transpose_b && gemv_enabled_ && gpu::gemv_supported(w.data, w_dtype, x.as<const float>(), m, n, k)) {
    DJINN_CUDA_RETURN_IF_ERROR(gpu::gemv(w.data, w_dtype, x.as<const float>(), m, n, k,
                                         residual != nullptr ? residual->as<const float>() : nullptr, out.as<float>(),
                                         compute_));
    return {};
  }
  if (k == 0) {
    DJINN_RETURN_IF_ERROR(zero(out.data, out.nbytes()));  // empty sums
  } else {
    DJINN_RETURN_IF_ERROR(gemm(x, w, w_dtype, transpose_b, out));
  }
  if (residual != nullptr)  // in place, one f32 add per element as the add op
    DJINN_CUDA_RETURN_IF_ERROR(gpu::binary(gpu::BinaryOp::kAdd, out.as<const float>(), residual->data, gpu::Dtype::kF32,
                                           false, m, n, out.as<float>(), compute_));
  return {};
}

// out = x . op(w) by cuBLAS (cuBLASLt where tuned); m, n, k in [1, 2^31).
Status CudaBackend::gemm(const TensorView& x, const TensorView& w, gpu::Dtype w_dtype, bool transpose_b,
                         const TensorView& out) {
  const int64_t m = x.dim(0), k = x.dim(1), n = out.dim(1);
  // Row-major out[m, n] = x[m, k] . op(w) is column-major out^T[n, m] = op(w)^T . x^T:
  // w's row-major buffer read column-major is w^T, so op(w)^T is w's buffer itself
  // (w [k, n]: OP_N, ld n) or its transpose (w [n, k], transpose_b: OP_T, ld k).
  const cublasOperation_t op_w = transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int mi = static_cast<int>(m), ni = static_cast<int>(n), ki = static_cast<int>(k);
  const int ld_w = transpose_b ? ki : ni;
  const float one = 1.0f, zero_value = 0.0f;
  if (w_dtype == gpu::Dtype::kF32) {
    DJINN_CUBLAS_RETURN_IF_ERROR(cublasSgemm(cublas_, op_w, CUBLAS_OP_N, ni, mi, ki, &one, w.as<const float>(), ld_w,
                                             x.as<const float>(), ki, &zero_value, out.as<float>(), ni));
    return {};
  }
  // 16-bit weights: x narrowed to the weight's dtype, then tensor cores with f32
  // accumulation and an f32 result.
  // The narrowed x may still be there from the GEMM before (Note [Narrowed activations]).
  const size_t x_bytes = static_cast<size_t>(m * k) * gpu::dtype_bytes(w_dtype);
  const NarrowedSource source{static_cast<const std::byte*>(x.data), x.nbytes(), static_cast<int>(w_dtype)};
  DJINN_ASSIGN_OR_RETURN(void* const x16, narrowed_buffer(x_bytes));
  if (narrowed_source_.data != source.data || narrowed_source_.bytes != source.bytes ||
      narrowed_source_.dtype != source.dtype) {
    forget_narrowed();
    DJINN_CUDA_RETURN_IF_ERROR(gpu::convert_from_f32(x.as<const float>(), x16, w_dtype, m * k, compute_));
    // Kept only if the GEMM below leaves x as it is (out does not overlap it).
    const auto* out_begin = static_cast<const std::byte*>(out.data);
    if (out_begin + out.nbytes() <= source.data || source.data + source.bytes <= out_begin) narrowed_source_ = source;
  }
  const cudaDataType_t type = w_dtype == gpu::Dtype::kF16 ? CUDA_R_16F : CUDA_R_16BF;
  if (tuned_gemm_ != nullptr)
    return tuned_gemm_->run(mi, ni, ki, transpose_b, type, w.data, x16, out.as<float>(), compute_, capturing_);
  DJINN_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(cublas_, op_w, CUBLAS_OP_N, ni, mi, ki, &one, w.data, type, ld_w, x16, type,
                                            ki, &zero_value, out.data, CUDA_R_32F, ni, CUBLAS_COMPUTE_32F,
                                            CUBLAS_GEMM_DEFAULT));
  return {};
}

Status CudaBackend::attention(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache,
                              const TensorView& positions, const OpAttrs& attrs, const TensorView& out) {
  constexpr OpKind op = OpKind::kAttention;
  DJINN_RETURN_IF_ERROR(check_f32(op, q, "q"));
  DJINN_RETURN_IF_ERROR(check_f32(op, out, "out"));
  DJINN_RETURN_IF_ERROR(check_positions(op, positions));
  DJINN_ASSIGN_OR_RETURN(const gpu::Dtype kv_dtype, check_storage(op, k_cache, "k_cache"));
  DJINN_RETURN_IF_ERROR(check_storage(op, v_cache, "v_cache").status());
  if (v_cache.dtype != k_cache.dtype) return unsupported(op, v_cache, "k and v caches of different dtypes");
  if (attrs.head_dim > gpu::kMaxAttentionHeadDim)
    return unsupported(op, q, fmt::format("head_dim {} > {}", attrs.head_dim, gpu::kMaxAttentionHeadDim));
  const int64_t rows = q.dim(0);
  if (rows == 0) return {};
  const gpu::KvCacheLayout layout{kv_dtype, k_cache.dim(0), k_cache.dim(1), k_cache.strides[0]};
  if (layout.capacity > INT32_MAX) return unsupported(op, k_cache, "a kv capacity beyond 2^31 rows");
  const gpu::AttentionShape shape{attrs.n_heads, attrs.n_kv_heads, attrs.head_dim, attrs.scale, q.strides[0],
                                  out.strides[0]};
  if (rows > kMaxDecodeRows && gpu::attention_prefill_supported(k_cache.data, v_cache.data, layout, shape)) {
    DJINN_CUDA_RETURN_IF_ERROR(gpu::attention_prefill(q.as<const float>(), k_cache.data, v_cache.data, layout,
                                                      positions.as<const int32_t>(), rows, shape, out.as<float>(),
                                                      error_, compute_));
    return {};
  }
  void* scratch = nullptr;
  if (const size_t bytes = gpu::attention_decode_workspace_bytes(rows, shape, layout, sm_count_); bytes > 0) {
    DJINN_ASSIGN_OR_RETURN(scratch, workspace(bytes));
  }
  DJINN_CUDA_RETURN_IF_ERROR(gpu::attention_decode(q.as<const float>(), k_cache.data, v_cache.data, layout,
                                                   positions.as<const int32_t>(), rows, shape, out.as<float>(),
                                                   scratch, sm_count_, error_, compute_));
  return {};
}

// One decode step of B sessions: kv_append of row b of k_new / v_new into session b's
// caches at positions[b], then row b of q attends over rows [0, positions[b]].
Status CudaBackend::batched_decode_attention(const TensorView& q, const TensorView& k_new, const TensorView& v_new,
                                             const TensorView& positions, std::span<const TensorView* const> caches,
                                             const OpAttrs& attrs, const TensorView& out) {
  constexpr OpKind op = OpKind::kBatchedDecodeAttention;
  DJINN_RETURN_IF_ERROR(check_f32(op, q, "q"));
  DJINN_RETURN_IF_ERROR(check_f32(op, k_new, "k_new"));
  DJINN_RETURN_IF_ERROR(check_f32(op, v_new, "v_new"));
  DJINN_RETURN_IF_ERROR(check_f32(op, out, "out"));
  DJINN_RETURN_IF_ERROR(check_positions(op, positions));
  const int64_t batch = q.dim(0);
  if (batch == 0) return {};
  if (caches.size() != static_cast<size_t>(2 * batch))
    return invalid_argument(fmt::format("cuda {}: {} caches for a batch of {}", op_name(op), caches.size(), batch));
  if (attrs.head_dim > gpu::kMaxAttentionHeadDim)
    return unsupported(op, q, fmt::format("head_dim {} > {}", attrs.head_dim, gpu::kMaxAttentionHeadDim));
  const TensorView& first = *caches[0];
  DJINN_ASSIGN_OR_RETURN(const gpu::Dtype kv_dtype, check_storage(op, first, "k_cache"));
  batch_k_caches_.resize(static_cast<size_t>(batch));
  batch_v_caches_.resize(static_cast<size_t>(batch));
  for (size_t i = 0; i < caches.size(); ++i) {
    const TensorView& cache = *caches[i];
    if (cache.dtype != first.dtype || cache.shape != first.shape || !dense(cache))
      return unsupported(op, cache, "caches of different dtypes, shapes or layouts");
    (i % 2 == 0 ? batch_k_caches_ : batch_v_caches_)[i / 2] = cache.data;
  }
  const gpu::KvCacheLayout layout{kv_dtype, first.dim(0), first.dim(1), first.strides[0]};
  if (layout.capacity > INT32_MAX) return unsupported(op, first, "a kv capacity beyond 2^31 rows");
  const int32_t* pos = positions.as<const int32_t>();
  DJINN_CUDA_RETURN_IF_ERROR(gpu::kv_append_batched(batch_k_caches_.data(), layout, k_new.as<const float>(),
                                                    k_new.strides[0], batch, pos, error_, compute_));
  DJINN_CUDA_RETURN_IF_ERROR(gpu::kv_append_batched(batch_v_caches_.data(), layout, v_new.as<const float>(),
                                                    v_new.strides[0], batch, pos, error_, compute_));
  const gpu::AttentionShape shape{attrs.n_heads, attrs.n_kv_heads, attrs.head_dim, attrs.scale, q.strides[0],
                                  out.strides[0]};
  void* scratch = nullptr;
  if (const size_t bytes = gpu::attention_decode_batched_workspace_bytes(batch, shape, layout, sm_count_); bytes > 0) {
    DJINN_ASSIGN_OR_RETURN(scratch, workspace(bytes));
  }
  DJINN_CUDA_RETURN_IF_ERROR(gpu::attention_decode_batched(q.as<const float>(), batch_k_caches_.data(),
                                                           batch_v_caches_.data(), layout, pos, batch, shape,
                                                           out.as<float>(), scratch, sm_count_, error_, compute_));
  return {};
}

// Rows [start, start + length) of x (any dtype, rank 1 or 2) into out, bytes as they are.
Status CudaBackend::copy_rows(const TensorView& x, int64_t start, int64_t length, const TensorView& out) {
  const int64_t total = x.dim(0);
  if (start < 0 || length < 0 || start > total || length > total - start)
    return out_of_range(fmt::format("rows [{}, +{}) of a tensor of {} rows", start, length, total));
  if (!dense(x) || !dense(out)) return unsupported(OpKind::kRows, x, "x and out must be dense");
  const size_t row_bytes = x.rank() == 1 ? dtype_size(x.dtype) : static_cast<size_t>(x.dim(1)) * dtype_size(x.dtype);
  const size_t bytes = static_cast<size_t>(length) * row_bytes;
  if (bytes == 0) return {};
  DJINN_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out.data, static_cast<const std::byte*>(x.data) + start * row_bytes,
                                             bytes, cudaMemcpyDeviceToDevice, compute_));
  return {};
}

Status CudaBackend::run_op(OpKind op, const OpAttrs& attrs, std::span<const TensorView* const> inputs,
                           const TensorView& output, const SymbolBindings& /*bindings: positions come from the device*/) {
  if (!profile_.enabled || capturing_) return dispatch_op(op, attrs, inputs, output);
  CUevent_st* start = profile_event();
  CUevent_st* end = profile_event();
  if (start == nullptr || end == nullptr) return dispatch_op(op, attrs, inputs, output);
  (void)cudaEventRecord(start, compute_);
  const Status status = dispatch_op(op, attrs, inputs, output);
  (void)cudaEventRecord(end, compute_);
  profile_.pending.emplace_back(op, start, end);
  return status;
}

CUevent_st* CudaBackend::profile_event() {
  if (!profile_.spare.empty()) {
    CUevent_st* event = profile_.spare.back();
    profile_.spare.pop_back();
    return event;
  }
  cudaEvent_t event = nullptr;
  return cudaEventCreate(&event) == cudaSuccess ? event : nullptr;
}

// After the compute stream synchronized: every pending pair has completed.
void CudaBackend::collect_profile() {
  for (auto& [op, start, end] : profile_.pending) {
    float ms = 0;
    if (cudaEventElapsedTime(&ms, start, end) == cudaSuccess) {
      profile_.ms[static_cast<size_t>(op)] += ms;
      ++profile_.count[static_cast<size_t>(op)];
    }
    profile_.spare.push_back(start);
    profile_.spare.push_back(end);
  }
  profile_.pending.clear();
}

void CudaBackend::log_profile() const {
  double total = 0;
  for (double ms : profile_.ms) total += ms;
  std::vector<size_t> order;
  for (size_t i = 0; i < profile_.ms.size(); ++i)
    if (profile_.count[i] > 0) order.push_back(i);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return profile_.ms[a] > profile_.ms[b]; });
  std::string table = fmt::format("cuda op profile: {:.3f} ms of GPU time in ops", total);
  for (size_t i : order)
    table += fmt::format("\n  {:<26} {:>10.3f} ms {:>5.1f}% {:>9} ops {:>9.2f} us/op", op_name(static_cast<OpKind>(i)),
                         profile_.ms[i], 100.0 * profile_.ms[i] / std::max(total, 1e-9), profile_.count[i],
                         1e3 * profile_.ms[i] / static_cast<double>(profile_.count[i]));
  std::fprintf(stderr, "%s\n", table.c_str());  // asked for by name: not subject to the log level
}

Status CudaBackend::dispatch_op(OpKind op, const OpAttrs& a, std::span<const TensorView* const> in,
                                const TensorView& out) {
  // Before the op (a failed op may have written part of its output). An op that writes
  // KV caches besides its output (batched_decode_attention) forgets outright.
  if (op_has_trait(op, kWritesKv) && !op_has_trait(op, kAliasesInput0)) forget_narrowed();
  else forget_narrowed_if_written(out);
  switch (op) {
    case OpKind::kEmbedding: {
      const TensorView &table = *in[0], &ids = *in[1];
      DJINN_ASSIGN_OR_RETURN(const gpu::Dtype dtype, check_storage(op, table, "table"));
      DJINN_RETURN_IF_ERROR(check_positions(op, ids));
      DJINN_RETURN_IF_ERROR(check_f32(op, out, "out"));
      DJINN_CUDA_RETURN_IF_ERROR(gpu::embedding(table.data, dtype, table.dim(0), table.dim(1), ids.as<const int32_t>(),
                                                ids.dim(0), out.as<float>(), error_, compute_));
      return {};
    }
    case OpKind::kMatMul: return matmul(*in[0], *in[1], a.transpose_b, nullptr, out);
    case OpKind::kMatMulAdd: return matmul(*in[0], *in[1], a.transpose_b, in[2], out);
    case OpKind::kAdd:
    case OpKind::kMul: {
      const TensorView &x = *in[0], &y = *in[1];
      DJINN_RETURN_IF_ERROR(check_f32(op, x, "a"));
      DJINN_RETURN_IF_ERROR(check_f32(op, out, "out"));
      DJINN_ASSIGN_OR_RETURN(const gpu::Dtype y_dtype, check_storage(op, y, "b"));
      const bool broadcast = y.rank() == 1;
      if (broadcast && op == OpKind::kMul) return unsupported(op, y, "a broadcast b");
      const gpu::BinaryOp kind = op == OpKind::kAdd ? gpu::BinaryOp::kAdd : gpu::BinaryOp::kMul;
      DJINN_CUDA_RETURN_IF_ERROR(gpu::binary(kind, x.as<const float>(), y.data, y_dtype, broadcast, x.dim(0), x.dim(1),
                                             out.as<float>(), compute_));
      return {};
    }
    case OpKind::kLayerNorm: {
      const TensorView &x = *in[0], &gamma = *in[1], &beta = *in[2];
      DJINN_RETURN_IF_ERROR(check_f32(op, x, "x"));
      DJINN_RETURN_IF_ERROR(check_f32(op, out, "out"));
      DJINN_ASSIGN_OR_RETURN(const gpu::Dtype dtype, check_storage(op, gamma, "gamma"));
      DJINN_RETURN_IF_ERROR(check_storage(op, beta, "beta").status());
      if (beta.dtype != gamma.dtype) return unsupported(op, beta, "gamma and beta of different dtypes");
      DJINN_CUDA_RETURN_IF_ERROR(gpu::layernorm(x.as<const float>(), gamma.data, beta.data, dtype, a.eps, x.dim(0),
                                                x.dim(1), out.as<float>(), compute_));
      return {};
    }
    case OpKind::kRmsNorm: {
      const TensorView &x = *in[0], &gamma = *in[1];
      DJINN_RETURN_IF_ERROR(check_f32(op, x, "x"));
      DJINN_RETURN_IF_ERROR(check_f32(op, out, "out"));
      DJINN_ASSIGN_OR_RETURN(const gpu::Dtype dtype, check_storage(op, gamma, "gamma"));
      DJINN_CUDA_RETURN_IF_ERROR(
          gpu::rmsnorm(x.as<const float>(), gamma.data, dtype, a.eps, x.dim(0), x.dim(1), out.as<float>(), compute_));
      return {};
    }
    case OpKind::kGeluNew:
    case OpKind::kSilu: {
      DJINN_RETURN_IF_ERROR(check_f32(op, *in[0], "x"));
      DJINN_RETURN_IF_ERROR(check_f32(op, out, "out"));
      const gpu::UnaryOp kind = op == OpKind::kGeluNew ? gpu::UnaryOp::kGeluNew : gpu::UnaryOp::kSilu;
      DJINN_CUDA_RETURN_IF_ERROR(gpu::unary(kind, in[0]->as<const float>(), out.as<float>(), in[0]->numel(), compute_));
      return {};
    }
    case OpKind::kSiluMul: {
      DJINN_RETURN_IF_ERROR(check_f32(op, *in[0], "a"));
      DJINN_RETURN_IF_ERROR(check_f32(op, *in[1], "b"));
      DJINN_RETURN_IF_ERROR(check_f32(op, out, "out"));
      DJINN_CUDA_RETURN_IF_ERROR(gpu::silu_mul(in[0]->as<const float>(), in[1]->as<const float>(), out.as<float>(),
                                               in[0]->numel(), compute_));
      return {};
    }
    case OpKind::kRope: {
      const TensorView &x = *in[0], &positions = *in[1];
      DJINN_RETURN_IF_ERROR(check_f32(op, x, "x"));
      DJINN_RETURN_IF_ERROR(check_f32(op, out, "out"));
      DJINN_RETURN_IF_ERROR(check_positions(op, positions));
      if (a.head_dim > gpu::kMaxRopeHeadDim)
        return unsupported(op, x, fmt::format("head_dim {} > {}", a.head_dim, gpu::kMaxRopeHeadDim));
      DJINN_CUDA_RETURN_IF_ERROR(gpu::rope(x.as<const float>(), positions.as<const int32_t>(), x.dim(0), x.dim(1),
                                           a.head_dim, a.rope_theta, out.as<float>(), error_, compute_));
      return {};
    }
    case OpKind::kSoftmax: {
      DJINN_RETURN_IF_ERROR(check_f32(op, *in[0], "x"));
      DJINN_RETURN_IF_ERROR(check_f32(op, out, "out"));
      DJINN_CUDA_RETURN_IF_ERROR(
          gpu::softmax(in[0]->as<const float>(), in[0]->dim(0), in[0]->dim(1), out.as<float>(), compute_));
      return {};
    }
    case OpKind::kSlice: {
      const TensorView& x = *in[0];
      DJINN_RETURN_IF_ERROR(check_f32(op, x, "x"));
      DJINN_RETURN_IF_ERROR(check_f32(op, out, "out"));
      if (a.start < 0 || a.length < 0 || a.start > x.dim(1) || a.length > x.dim(1) - a.start)
        return out_of_range(fmt::format("slice: columns [{}, +{}) of {}", a.start, a.length, x.dim(1)));
      DJINN_CUDA_RETURN_IF_ERROR(
          gpu::slice(x.as<const float>(), x.dim(0), x.dim(1), a.start, a.length, out.as<float>(), compute_));
      return {};
    }
    case OpKind::kKvAppend: {
      const TensorView &cache = *in[0], &fresh = *in[1], &positions = *in[2];
      DJINN_ASSIGN_OR_RETURN(const gpu::Dtype dtype, check_storage(op, cache, "cache"));
      DJINN_RETURN_IF_ERROR(check_f32(op, fresh, "new"));
      DJINN_RETURN_IF_ERROR(check_positions(op, positions));
      const gpu::KvCacheLayout layout{dtype, cache.dim(0), cache.dim(1), cache.strides[0]};
      DJINN_CUDA_RETURN_IF_ERROR(gpu::kv_append(cache.data, layout, fresh.as<const float>(), fresh.strides[0],
                                                fresh.dim(0), positions.as<const int32_t>(), error_, compute_));
      return {};
    }
    case OpKind::kAttention: return attention(*in[0], *in[1], *in[2], *in[3], a, out);
    case OpKind::kBatchedDecodeAttention:
      return batched_decode_attention(*in[0], *in[1], *in[2], *in[3], in.subspan(4), a, out);
    case OpKind::kRows: return copy_rows(*in[0], a.start, a.length, out);
    case OpKind::kConcatRows: {
      const TensorView &x = *in[0], &y = *in[1];
      if (!dense(x) || !dense(y) || !dense(out)) return unsupported(op, x, "a, b and out must be dense");
      if (x.nbytes() > 0)
        DJINN_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out.data, x.data, x.nbytes(), cudaMemcpyDeviceToDevice, compute_));
      if (y.nbytes() > 0)
        DJINN_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(static_cast<std::byte*>(out.data) + x.nbytes(), y.data, y.nbytes(),
                                                   cudaMemcpyDeviceToDevice, compute_));
      return {};
    }
    case OpKind::kLastRow: {
      const TensorView& x = *in[0];
      if (x.dim(0) == 0) return invalid_argument("last_row of an empty tensor");
      return copy_rows(x, x.dim(0) - 1, 1, out);
    }
    case OpKind::kArgmax: {
      const TensorView& x = *in[0];
      DJINN_RETURN_IF_ERROR(check_f32(op, x, "x"));
      if (out.dtype != DType::kI32 || !dense(out)) return unsupported(op, out, "out must be dense i32");
      if (x.dim(1) == 0) return invalid_argument("argmax over an empty row");
      DJINN_CUDA_RETURN_IF_ERROR(gpu::argmax(x.as<const float>(), x.dim(0), x.dim(1), out.as<int32_t>(), compute_));
      return {};
    }
  }
  return internal_error("cuda backend: unknown op");
}

// ---------------------------------------------------------------------------------
// Step capture
// ---------------------------------------------------------------------------------

Status CudaBackend::begin_capture() {
  if (capturing_) return internal_error("cuda backend: begin_capture while capturing");
  DJINN_CUDA_RETURN_IF_ERROR(cudaStreamBeginCapture(compute_, cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
  forget_narrowed();  // the capture must not rely on a conversion issued before it
  return {};
}

Result<uint64_t> CudaBackend::end_capture() {
  if (!capturing_) return internal_error("cuda backend: end_capture without begin_capture");
  capturing_ = false;
  forget_narrowed();  // nothing of the capture has run yet
  cudaGraph_t graph = nullptr;
  DJINN_CUDA_RETURN_IF_ERROR(cudaStreamEndCapture(compute_, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  DJINN_CUDA_RETURN_IF_ERROR(instantiated);
  const uint64_t id = next_capture_id_++;
  captures_.emplace(id, exec);
  return id;
}

void CudaBackend::abort_capture() {
  if (!capturing_) return;
  capturing_ = false;
  forget_narrowed();
  cudaGraph_t graph = nullptr;
  (void)cudaStreamEndCapture(compute_, &graph);  // invalidated captures end with an error: nothing to keep
  if (graph != nullptr) (void)cudaGraphDestroy(graph);
  (void)cudaGetLastError();  // the capture's error is not the next call's
}

Result<bool> CudaBackend::replay(uint64_t capture) {
  auto it = captures_.find(capture);
  if (it == captures_.end()) return false;
  forget_narrowed();
  DJINN_CUDA_RETURN_IF_ERROR(cudaGraphLaunch(it->second, compute_));
  return true;
}

void CudaBackend::release_capture(uint64_t capture) {
  auto it = captures_.find(capture);
  if (it == captures_.end()) return;
  (void)cudaGraphExecDestroy(it->second);
  captures_.erase(it);
}

void CudaBackend::drop_captures() {
  for (auto& [id, exec] : captures_) (void)cudaGraphExecDestroy(exec);
  captures_.clear();
}

}  // namespace djinn
