// Cross-backend op tests: every op of the op table (graph/op_table.h) runs on the CUDA
// backend and on the CPU backend, which is the reference, on the same random inputs;
// the two outputs must agree within a tolerance chosen per op (below). Then the data
// errors (an id outside the vocabulary, a position past the KV capacity) and, last,
// the golden fixtures end to end through a Runtime on the CUDA device.
//
// Only the Backend interface is used (make_backend, allocate, upload/download,
// run_op, synchronize), so this file compiles and links in every build. Every test's
// fixture calls make_backend(DeviceKind::kCuda) first and GTEST_SKIPs with its reason
// when that fails (built without CUDA, no GPU): on CPU machines the suite is skipped,
// not failed.
//
// Method (after the workplace's GPU method notes):
//  - Inputs are random, fixed seeds, fresh for every case, never zeros; sizes are
//    deliberately awkward (1, 3, 7, 17, 79, 128, 513, 50257, ...).
//  - Both backends' output buffers are poisoned before each run with 0xFF bytes: NaN
//    in f32 / f16 / bf16, -1 in i32. An element a kernel fails to write stays NaN (or
//    -1) and fails the comparison; NaN never passes.
//  - KV cache rows a step must not read (past the causal window) are poisoned with NaN
//    too: a kernel that reads them (even to multiply them by a zero probability) leaks
//    NaN into its output. Real arenas hold whatever the last session left there.
//
// Tolerances follow the arithmetic a correct CUDA kernel may do, not the storage:
//  - exact (bit for bit): data movement and single correctly rounded operations —
//    embedding (gather + widen), slice, rows, concat_rows, last_row, kv_append and the
//    caches batched_decode_attention writes (f32 -> f16/bf16 round-to-nearest-even, as
//    the CPU's), add, mul, argmax.
//  - f32 (‖Δ‖/‖ref‖ <= 1e-5, each |Δ| <= 1e-4 (|ref| + rms(ref))): reductions in f32 whose
//    summation order may differ — layernorm, rmsnorm (gamma/beta in any storage dtype:
//    both backends widen the same stored values), gelu_new, silu, rope at small
//    positions, and matmul / attention when weights / caches are f32 (so TF32 on the
//    CUDA side fails this, as it should: f32 means f32). Softmax too, against a float64
//    softmax, and the CPU's against it as well (ref_softmax).
//  - f16 (1e-3 / 1e-2) and bf16 (1e-2 / 5e-2): matmul with 16-bit weights and attention
//    over 16-bit caches, where the CUDA path may run the products on tensor cores in the
//    storage dtype. For matmul the CPU reference is computed on the activation rounded
//    to the weight's dtype (what the CUDA GEMM path feeds cuBLAS), so a GEMM that rounds
//    the same way agrees to ~1e-7; the per-dtype tolerance also admits a kernel that
//    keeps the activation in f32 (a decode GEMV): rounding x costs ~3e-4 (f16) / ~2e-3
//    (bf16) in ‖Δ‖/‖ref‖ on random data. For attention the reference reads the same
//    stored cache values; the tolerance admits q and the probabilities rounded to the
//    cache dtype for the tensor-core products (batched_decode_attention: the same).
//  - rope at large positions: the angle pos * inv_freq is itself rounded in f32 (about
//    pos * 2^-24 rad) and two correct implementations may compute inv_freq one ulp
//    apart, so the bound grows with the largest position (see RopeLargePositions).
// The elementwise bound is relative to |ref| + rms(ref), so elements that cancel to
// near zero are judged against the tensor's scale rather than their own.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "golden/golden_expected.h"
#include "djinn/backend/backend.h"
#include "djinn/backend/cuda/cuda_backend.h"
#include "djinn/core/dtype.h"
#include "djinn/core/shape.h"
#include "djinn/core/status.h"
#include "djinn/core/tensor.h"
#include "djinn/graph/op.h"
#include "djinn/models/safetensors.h"
#include "djinn/runtime/runtime.h"

namespace djinn {
namespace {

// ---------------------------------------------------------------------------------
// Coverage: a switch without a default over every op, so adding an op to the table
// fails to compile (-Wswitch -Werror) until it has a test here.
// ---------------------------------------------------------------------------------

constexpr const char* covering_test(OpKind op) {
  switch (op) {
    case OpKind::kEmbedding: return "CudaOps.Embedding*";
    case OpKind::kMatMul: return "CudaOps.MatMul*";
    case OpKind::kAdd: return "CudaOps.Add*";
    case OpKind::kMul: return "CudaOps.Mul*";
    case OpKind::kLayerNorm: return "CudaOps.LayerNorm*";
    case OpKind::kRmsNorm: return "CudaOps.RmsNorm*";
    case OpKind::kGeluNew: return "CudaOps.GeluNewAndSilu*";
    case OpKind::kSilu: return "CudaOps.GeluNewAndSilu*";
    case OpKind::kRope: return "CudaOps.Rope*";
    case OpKind::kSoftmax: return "CudaOps.Softmax*";
    case OpKind::kSlice: return "CudaOps.Slice*";
    case OpKind::kKvAppend: return "CudaOps.KvAppend*";
    case OpKind::kAttention: return "CudaOps.Attention*";
    case OpKind::kBatchedDecodeAttention: return "CudaOps.BatchedDecodeAttention*";
    case OpKind::kRows: return "CudaOps.Rows*";
    case OpKind::kConcatRows: return "CudaOps.ConcatRows*";
    case OpKind::kLastRow: return "CudaOps.LastRow*";
    case OpKind::kArgmax: return "CudaOps.Argmax*";
    case OpKind::kSiluMul: return "CudaOps.SiluMul*";
    case OpKind::kMatMulAdd: return "CudaOps.MatMulAdd*";
  }
  return "";
}
constexpr bool every_op_has_a_test() {
  for (int i = 0; i < kNumOps; ++i)
    if (covering_test(static_cast<OpKind>(i))[0] == '\0') return false;
  return true;
}
static_assert(every_op_has_a_test());

// ---------------------------------------------------------------------------------
// Host data
// ---------------------------------------------------------------------------------

size_t sz(int64_t n) { return static_cast<size_t>(n); }
std::string dname(DType d) { return std::string(dtype_name(d)); }

// A tensor's bytes on the host, with its shape and dtype.
struct HostData {
  DType dtype = DType::kF32;
  Shape shape;
  std::vector<std::byte> bytes;

  int64_t numel() const { return num_elements(shape); }
  size_t nbytes() const { return bytes.size(); }
};

// Values rounded through `dtype` and widened back (identity for f32): what storing
// them in that dtype keeps.
std::vector<float> round_through(std::vector<float> v, DType dtype) {
  if (dtype == DType::kF16)
    for (float& x : v) x = half_to_float(float_to_half(x));
  if (dtype == DType::kBF16)
    for (float& x : v) x = bf16_to_float(float_to_bf16(x));
  return v;
}

// f32 values stored as `dtype` (f32, f16 or bf16; rounded to nearest even).
HostData stored(const std::vector<float>& v, DType dtype, Shape shape) {
  HostData h{dtype, std::move(shape), {}};
  DJINN_ASSERT(static_cast<size_t>(h.numel()) == v.size());
  h.bytes.resize(v.size() * dtype_size(dtype));
  convert_from_f32(v.data(), v.size(), dtype, h.bytes.data());
  return h;
}
HostData f32_data(const std::vector<float>& v, Shape shape) { return stored(v, DType::kF32, std::move(shape)); }
HostData i32_data(const std::vector<int32_t>& v, Shape shape) {
  HostData h{DType::kI32, std::move(shape), std::vector<std::byte>(v.size() * sizeof(int32_t))};
  DJINN_ASSERT(static_cast<size_t>(h.numel()) == v.size());
  if (!v.empty()) std::memcpy(h.bytes.data(), v.data(), h.bytes.size());
  return h;
}

// A floating tensor's elements widened to f32.
std::vector<float> as_f32(const HostData& h) {
  std::vector<float> out(sz(h.numel()));
  convert_to_f32(h.bytes.data(), h.dtype, out.size(), out.data());
  return out;
}
std::vector<int32_t> as_i32(const HostData& h) {
  std::vector<int32_t> out(sz(h.numel()));
  if (!out.empty()) std::memcpy(out.data(), h.bytes.data(), h.bytes.size());
  return out;
}

// Fixed-seed random draws; every call takes the next seed, so every case (and every
// tensor of a case) gets fresh values that are still the same from run to run.
class Rng {
 public:
  explicit Rng(uint32_t seed) : next_seed_(seed) {}
  std::vector<float> floats(int64_t n, float lo = -1.0f, float hi = 1.0f) {
    std::mt19937 rng(next_seed_++);
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(sz(n));
    for (float& x : v) {
      do x = dist(rng);
      while (x == 0.0f);  // never zeros
    }
    return v;
  }
  std::vector<int32_t> ints(int64_t n, int32_t lo, int32_t hi) {
    std::mt19937 rng(next_seed_++);
    std::uniform_int_distribution<int32_t> dist(lo, hi);
    std::vector<int32_t> v(sz(n));
    for (int32_t& x : v) x = dist(rng);
    return v;
  }
  uint32_t seed() const { return next_seed_; }

 private:
  uint32_t next_seed_;
};

std::vector<int32_t> consecutive(int64_t first, int64_t n) {
  std::vector<int32_t> v(sz(n));
  for (int64_t i = 0; i < n; ++i) v[sz(i)] = static_cast<int32_t>(first + i);
  return v;
}

// ---------------------------------------------------------------------------------
// Running one op on a backend
// ---------------------------------------------------------------------------------

constexpr size_t kAlignment = 256;
constexpr std::byte kPoison{0xFF};  // NaN in f32 / f16 / bf16, -1 in i32

// One allocation on a backend, freed when it goes out of scope.
class DeviceBuffer {
 public:
  DeviceBuffer(Backend& backend, size_t bytes)
      : backend_(backend), data_(backend.allocate(std::max(bytes, kAlignment), kAlignment)) {}
  ~DeviceBuffer() {
    if (data_ != nullptr) backend_.deallocate(data_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data() const { return data_; }

 private:
  Backend& backend_;
  void* data_;
};

// One op with its host inputs. The output has `out_shape` / `out_dtype`, except for an
// op that aliases input 0 (kv_append), whose output is input 0's memory.
struct OpCase {
  OpKind op = OpKind::kAdd;
  OpAttrs attrs;
  std::vector<HostData> inputs;
  Shape out_shape;
  DType out_dtype = DType::kF32;
  SymbolBindings bindings;
  // Inputs the op writes besides its output (batched_decode_attention's caches): read
  // back after the run and compared bit for bit.
  std::vector<size_t> written_inputs;
};

struct OpRun {
  Status status;  // run_op's, else synchronize()'s
  HostData output;
  std::vector<HostData> written_inputs;  // parallel to OpCase::written_inputs
};

// Uploads `c`'s inputs into fresh allocations of `backend`, poisons the output, runs
// the op, synchronizes and downloads the output. Any failure of the copies is a test
// failure; a failure of run_op or synchronize comes back in `status` (data errors).
OpRun run_on(Backend& backend, const OpCase& c) {
  OpRun result;
  const bool aliases = op_has_trait(c.op, kAliasesInput0);
  std::vector<std::unique_ptr<DeviceBuffer>> buffers;
  std::vector<TensorView> views;
  views.reserve(c.inputs.size());
  for (const HostData& in : c.inputs) {
    buffers.push_back(std::make_unique<DeviceBuffer>(backend, in.nbytes()));
    EXPECT_NE(buffers.back()->data(), nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buffers.back()->data()) % kAlignment, 0u);
    if (in.nbytes() > 0) {
      const Status up = backend.upload(buffers.back()->data(), in.bytes.data(), in.nbytes());
      EXPECT_TRUE(up.ok()) << up.to_string();
    }
    views.push_back(TensorView::contiguous(buffers.back()->data(), in.shape, in.dtype));
  }
  std::vector<const TensorView*> pointers;
  for (const TensorView& v : views) pointers.push_back(&v);

  TensorView out_view;
  std::unique_ptr<DeviceBuffer> out_buffer;
  if (aliases) {
    out_view = views.at(0);
    result.output = c.inputs.at(0);
  } else {
    result.output = HostData{c.out_dtype, c.out_shape, std::vector<std::byte>(sz(num_elements(c.out_shape)) *
                                                                              dtype_size(c.out_dtype), kPoison)};
    out_buffer = std::make_unique<DeviceBuffer>(backend, result.output.nbytes());
    if (result.output.nbytes() > 0) {
      const Status up = backend.upload(out_buffer->data(), result.output.bytes.data(), result.output.nbytes());
      EXPECT_TRUE(up.ok()) << up.to_string();
    }
    out_view = TensorView::contiguous(out_buffer->data(), c.out_shape, c.out_dtype);
  }

  const Status ran = backend.run_op(c.op, c.attrs, pointers, out_view, c.bindings);
  const Status synced = backend.synchronize();  // always: drains the queue and clears the error
  result.status = !ran.ok() ? ran : synced;
  if (result.status.ok() && result.output.nbytes() > 0) {
    const Status down = backend.download(result.output.bytes.data(), out_view.data, result.output.nbytes());
    EXPECT_TRUE(down.ok()) << down.to_string();
  }
  if (result.status.ok()) {
    for (size_t index : c.written_inputs) {
      result.written_inputs.push_back(c.inputs.at(index));
      HostData& back = result.written_inputs.back();
      std::fill(back.bytes.begin(), back.bytes.end(), kPoison);
      const Status down = backend.download(back.bytes.data(), views.at(index).data, back.nbytes());
      EXPECT_TRUE(down.ok()) << down.to_string();
    }
    const Status after = backend.synchronize();
    EXPECT_TRUE(after.ok()) << after.to_string();
  }
  return result;
}

// ---------------------------------------------------------------------------------
// Comparisons
// ---------------------------------------------------------------------------------

struct Tolerance {
  double norm_rel;  // ‖got - want‖ / ‖want‖
  double elem;      // each |got - want| <= elem * (|want| + rms(want))
};
constexpr Tolerance kExact{0.0, 0.0};
constexpr Tolerance kF32Tol{1e-5, 1e-4};
constexpr Tolerance kF16Tol{1e-3, 1e-2};
constexpr Tolerance kBf16Tol{1e-2, 5e-2};

// The tolerance for arithmetic that may run in `dtype` on the CUDA side.
Tolerance compute_tolerance(DType dtype) {
  switch (dtype) {
    case DType::kF16: return kF16Tol;
    case DType::kBF16: return kBf16Tol;
    default: return kF32Tol;
  }
}

// Bit-for-bit equality, naming the first elements that differ.
::testing::AssertionResult bytes_equal(const HostData& got, const HostData& want) {
  if (got.dtype != want.dtype || got.shape != want.shape || got.nbytes() != want.nbytes())
    return ::testing::AssertionFailure() << "dtype / shape / size differ";
  const size_t width = dtype_size(got.dtype);
  auto failure = ::testing::AssertionFailure();
  size_t misses = 0;
  for (size_t i = 0; i < got.nbytes(); i += width) {
    if (std::memcmp(got.bytes.data() + i, want.bytes.data() + i, width) == 0) continue;
    if (misses < 5) {
      failure << "\n  [" << i / width << "]";
      if (is_floating(got.dtype)) {
        float g = 0, w = 0;
        convert_to_f32(got.bytes.data() + i, got.dtype, 1, &g);
        convert_to_f32(want.bytes.data() + i, want.dtype, 1, &w);
        failure << " got " << g << " want " << w;
      } else if (got.dtype == DType::kI32) {
        int32_t g = 0, w = 0;
        std::memcpy(&g, got.bytes.data() + i, 4);
        std::memcpy(&w, want.bytes.data() + i, 4);
        failure << " got " << g << " want " << w;
      }
    }
    ++misses;
  }
  if (misses == 0) return ::testing::AssertionSuccess();
  return failure << "\n  " << misses << " of " << got.nbytes() / width << " elements differ";
}

// Floating outputs within `tol` of the reference; every element of `got` finite (a NaN
// is poison left unwritten, or a kernel's own NaN). The reference must be finite too.
::testing::AssertionResult close_to(const HostData& got, const HostData& want, Tolerance tol) {
  if (tol.norm_rel == 0.0 && tol.elem == 0.0) return bytes_equal(got, want);
  if (got.shape != want.shape) return ::testing::AssertionFailure() << "shapes differ";
  const std::vector<float> g = as_f32(got), w = as_f32(want);
  double sum_sq_ref = 0, sum_sq_diff = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    if (!std::isfinite(w[i])) return ::testing::AssertionFailure() << "the reference's element " << i << " is " << w[i];
    if (!std::isfinite(g[i]))
      return ::testing::AssertionFailure() << "element " << i << " is " << g[i] << " (want " << w[i]
                                           << "): unwritten (poison) or a NaN/inf of the kernel";
    sum_sq_ref += double(w[i]) * w[i];
    sum_sq_diff += (double(g[i]) - w[i]) * (double(g[i]) - w[i]);
  }
  if (w.empty()) return ::testing::AssertionSuccess();
  const double rms = std::sqrt(sum_sq_ref / double(w.size()));
  const double norm_rel = sum_sq_ref > 0 ? std::sqrt(sum_sq_diff / sum_sq_ref) : std::sqrt(sum_sq_diff);
  auto failure = ::testing::AssertionFailure();
  size_t misses = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    const double diff = std::abs(double(g[i]) - w[i]);
    if (diff <= tol.elem * (std::abs(double(w[i])) + rms)) continue;
    if (misses < 5) failure << "\n  [" << i << "] got " << g[i] << " want " << w[i] << " (diff " << diff << ")";
    ++misses;
  }
  if (misses == 0 && norm_rel <= tol.norm_rel) return ::testing::AssertionSuccess();
  return failure << "\n  " << misses << " of " << w.size() << " elements beyond " << tol.elem
                 << " x (|ref| + rms " << rms << "); |diff|/|ref| = " << norm_rel << " (bound " << tol.norm_rel
                 << ")";
}

// ---------------------------------------------------------------------------------
// Fixture: the CUDA backend (skip without it) and the CPU reference backend
// ---------------------------------------------------------------------------------

class CudaOps : public ::testing::Test {
 protected:
  void SetUp() override {
    Result<std::unique_ptr<Backend>> cuda = make_backend(DeviceKind::kCuda);
    if (!cuda.ok()) GTEST_SKIP() << "no CUDA backend: " << cuda.status().to_string();
    cuda_ = std::move(cuda).value();
    ASSERT_EQ(cuda_->device(), DeviceKind::kCuda);
    Result<std::unique_ptr<Backend>> cpu = make_backend(DeviceKind::kCpu);
    ASSERT_TRUE(cpu.ok()) << cpu.status().to_string();
    cpu_ = std::move(cpu).value();
    const Status clean = cuda_->synchronize();
    ASSERT_TRUE(clean.ok()) << "a fresh CUDA backend reports an error: " << clean.to_string();
  }

  // Runs `c` on both backends; both must succeed and the CUDA output must be within
  // `tol` of the CPU's (kExact: bit for bit).
  void expect_matches_cpu(const OpCase& c, Tolerance tol) {
    const OpRun want = run_on(*cpu_, c);
    ASSERT_TRUE(want.status.ok()) << "the CPU reference failed: " << want.status.to_string();
    const OpRun got = run_on(*cuda_, c);
    ASSERT_TRUE(got.status.ok()) << "cuda: " << got.status.to_string();
    EXPECT_TRUE(close_to(got.output, want.output, tol));
    ASSERT_EQ(got.written_inputs.size(), want.written_inputs.size());
    for (size_t i = 0; i < got.written_inputs.size(); ++i)
      EXPECT_TRUE(bytes_equal(got.written_inputs[i], want.written_inputs[i])) << "input " << c.written_inputs[i];
  }

  // For ops whose CPU kernel is less accurate than f32 allows (see ref_softmax): CUDA
  // within `tol` of a float64 `reference`, and the CPU within `cpu_tol` of it.
  void expect_matches_reference(const OpCase& c, const HostData& reference, Tolerance tol, Tolerance cpu_tol) {
    const OpRun cpu = run_on(*cpu_, c);
    ASSERT_TRUE(cpu.status.ok()) << "the CPU failed: " << cpu.status.to_string();
    EXPECT_TRUE(close_to(cpu.output, reference, cpu_tol)) << "the CPU backend against float64";
    const OpRun got = run_on(*cuda_, c);
    ASSERT_TRUE(got.status.ok()) << "cuda: " << got.status.to_string();
    EXPECT_TRUE(close_to(got.output, reference, tol)) << "cuda against float64";
  }

  // Runs `c`, which holds bad data, on CUDA: run_op or synchronize must report it, and
  // the backend must be clean and working afterwards (checked by the caller running a
  // good case next).
  void expect_data_error(const OpCase& c) {
    const OpRun cpu_run = run_on(*cpu_, c);
    ASSERT_FALSE(cpu_run.status.ok()) << "the case is not bad data: the CPU reference accepts it";
    const OpRun got = run_on(*cuda_, c);
    EXPECT_FALSE(got.status.ok()) << "cuda accepted bad data that the CPU rejects with: " << cpu_run.status.to_string();
    EXPECT_EQ(got.status.code(), cpu_run.status.code()) << got.status.to_string();
    const Status again = cuda_->synchronize();
    EXPECT_TRUE(again.ok()) << "the error must be reported once, not again: " << again.to_string();
  }

  // x[m, k] f32 times w ([n, k] if transpose_b else [k, n]) stored in `w_dtype`. The
  // CPU reference gets x rounded through `w_dtype` (see the file comment); the CUDA
  // side gets the same rounded x, which rounds to itself.
  void check_matmul(Rng& rng, int64_t m, int64_t k, int64_t n, bool transpose_b, DType w_dtype) {
    SCOPED_TRACE(::testing::Message() << "m=" << m << " k=" << k << " n=" << n << " transpose_b=" << transpose_b
                                      << " w=" << dname(w_dtype));
    OpCase c{OpKind::kMatMul, OpAttrs{.transpose_b = transpose_b}, {}, {m, n}, DType::kF32, {m, 0}};
    const std::vector<float> x = round_through(rng.floats(m * k), w_dtype);
    c.inputs = {f32_data(x, {m, k}), stored(rng.floats(k * n), w_dtype, transpose_b ? Shape{n, k} : Shape{k, n})};
    expect_matches_cpu(c, compute_tolerance(w_dtype));
  }

  std::unique_ptr<Backend> cuda_;
  // The CUDA backend's count of swaps it waited for as it issued them (make_backend
  // made it: the cast holds; an inline accessor, so no link to the CUDA library).
  uint64_t swaps_waited() const { return static_cast<const CudaBackend&>(*cuda_).swaps_waited(); }
  std::unique_ptr<Backend> cpu_;
};

// ---------------------------------------------------------------------------------
// Memory: allocate, copy (several regions, every queue), zero, download
// ---------------------------------------------------------------------------------

TEST_F(CudaOps, MemoryCopyZeroAndQueuesRoundTrip) {
  EXPECT_FALSE(cuda_->host_addressable());
  Rng rng(1);
  const int64_t n = 100003;  // odd, not a multiple of any vector width
  const HostData src = f32_data(rng.floats(n), {n});
  DeviceBuffer a(*cuda_, src.nbytes()), b(*cuda_, src.nbytes());
  ASSERT_NE(a.data(), nullptr);
  ASSERT_TRUE(cuda_->upload(a.data(), src.bytes.data(), src.nbytes()).ok());
  // Device to device in two regions (second half first), then zero a middle slice.
  const size_t half = src.nbytes() / 2;
  const CopyRegion regions[] = {{static_cast<std::byte*>(b.data()) + half, static_cast<std::byte*>(a.data()) + half,
                                 src.nbytes() - half},
                                {b.data(), a.data(), half}};
  ASSERT_TRUE(cuda_->copy(regions, CopyQueue::kCompute).ok());
  ASSERT_TRUE(cuda_->zero(static_cast<std::byte*>(b.data()) + 4 * 1000, 4 * 77).ok());
  std::vector<std::byte> back(src.nbytes(), kPoison);
  ASSERT_TRUE(cuda_->download(back.data(), b.data(), back.size()).ok());
  ASSERT_TRUE(cuda_->synchronize().ok());
  std::vector<std::byte> want = src.bytes;
  std::fill_n(want.begin() + 4 * 1000, 4 * 77, std::byte{0});
  EXPECT_TRUE(back == want);

  // The swap queues, with pinned host memory, out and back in.
  std::vector<std::byte> host(src.nbytes(), kPoison);
  ASSERT_TRUE(cuda_->pin_host(host.data(), host.size()).ok());
  const CopyRegion out{host.data(), a.data(), host.size()};
  ASSERT_TRUE(cuda_->copy({&out, 1}, CopyQueue::kSwapOut).ok());
  EXPECT_TRUE(host == src.bytes);
  ASSERT_TRUE(cuda_->zero(b.data(), src.nbytes()).ok());
  ASSERT_TRUE(cuda_->synchronize().ok());
  const CopyRegion in{b.data(), host.data(), host.size()};
  ASSERT_TRUE(cuda_->copy({&in, 1}, CopyQueue::kSwapIn).ok());
  std::fill(back.begin(), back.end(), kPoison);
  ASSERT_TRUE(cuda_->download(back.data(), b.data(), back.size()).ok());
  EXPECT_TRUE(back == src.bytes);
  cuda_->unpin_host(host.data());
}

// Asynchronous swap copies of many spans: by SM threads (small, aligned, registered
// host memory), by the copy engines (unaligned spans, or host memory that is not
// registered), every byte round trips, and a failed precondition is never a kernel
// touching unmapped memory.
TEST_F(CudaOps, AsyncSpanCopiesRoundTripByKernelAndByCopyEngine) {
  constexpr size_t kDeviceBytes = size_t{3} << 20;
  std::byte* device = static_cast<std::byte*>(cuda_->allocate(kDeviceBytes, 256));
  ASSERT_NE(device, nullptr);
  Rng rng(77);
  std::vector<std::byte> pattern(kDeviceBytes);
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<std::byte>(rng.ints(1, 0, 255)[0]);
  ASSERT_TRUE(cuda_->upload(device, pattern.data(), kDeviceBytes).ok());
  std::vector<std::byte> registered(kDeviceBytes), plain(kDeviceBytes);
  ASSERT_TRUE(cuda_->pin_host(registered.data(), registered.size()).ok());
  // spans: {device offset, bytes}; packed back to back on the host side.
  auto round_trip = [&](std::vector<std::pair<size_t, size_t>> spans, std::vector<std::byte>& host) {
    std::vector<CopyRegion> out, in;
    size_t at = 0;
    for (auto [offset, bytes] : spans) {
      out.push_back({host.data() + at, device + offset, bytes});
      in.push_back({device + offset, host.data() + at, bytes});
      at += bytes;
    }
    std::fill(host.begin(), host.end(), kPoison);
    Result<std::shared_ptr<QueueEvent>> copied_out = cuda_->copy_async(out, CopyQueue::kSwapOut, SwapUse::kAhead);
    ASSERT_TRUE(copied_out.ok()) << copied_out.status().to_string();
    ASSERT_TRUE((*copied_out)->wait().ok());
    EXPECT_TRUE((*copied_out)->done());
    for (size_t i = 0, h = 0; i < spans.size(); h += spans[i].second, ++i)
      ASSERT_EQ(std::memcmp(host.data() + h, pattern.data() + spans[i].first, spans[i].second), 0) << "span " << i;
    ASSERT_TRUE(cuda_->zero(device, kDeviceBytes).ok());
    ASSERT_TRUE(cuda_->synchronize().ok());
    Result<std::shared_ptr<QueueEvent>> copied_in = cuda_->copy_async(in, CopyQueue::kSwapIn, SwapUse::kStepFollows);
    ASSERT_TRUE(copied_in.ok()) << copied_in.status().to_string();
    ASSERT_TRUE(cuda_->compute_waits_for(**copied_in).ok());  // the download below is ordered after it
    std::vector<std::byte> back(kDeviceBytes);
    ASSERT_TRUE(cuda_->download(back.data(), device, kDeviceBytes).ok());
    for (auto [offset, bytes] : spans)
      ASSERT_EQ(std::memcmp(back.data() + offset, pattern.data() + offset, bytes), 0) << "offset " << offset;
    EXPECT_GE((*copied_in)->elapsed_seconds(), 0.0);
    ASSERT_TRUE(cuda_->upload(device, pattern.data(), kDeviceBytes).ok());
  };
  std::vector<std::pair<size_t, size_t>> aligned, unaligned;
  for (size_t i = 0; i < 24; ++i) aligned.push_back({i * 100'000 / 16 * 16, 4096 + 16 * i});
  for (size_t i = 0; i < 24; ++i) unaligned.push_back({i * 100'001 + 3, 4093 + i});
  round_trip(aligned, registered);    // SM threads
  {  // the host side over two adjacent registrations (a pool registers chunk by chunk)
    std::vector<std::byte> chunked(kDeviceBytes);
    const size_t split = 50'000 / 16 * 16;  // inside the packed spans (~100 KB)
    ASSERT_TRUE(cuda_->pin_host(chunked.data(), split).ok());
    ASSERT_TRUE(cuda_->pin_host(chunked.data() + split, chunked.size() - split).ok());
    round_trip(aligned, chunked);
    cuda_->unpin_host(chunked.data() + split);
    cuda_->unpin_host(chunked.data());
  }
  round_trip(unaligned, registered);  // copy engines: not 16-byte aligned
  round_trip(aligned, plain);         // copy engines: host memory not registered
  std::vector<std::pair<size_t, size_t>> many;  // more spans than a kernel table holds
  for (size_t i = 0; i < 200; ++i) many.push_back({i * 8192, 4096});
  round_trip(many, registered);
  std::vector<std::pair<size_t, size_t>> one_large{{0, kDeviceBytes}};
  round_trip(one_large, registered);
  cuda_->unpin_host(registered.data());
  cuda_->deallocate(device);
}

// A session's swap as the backend sees it: 24 equal slots at a constant stride, packed
// into one host slice (one 2D copy), and the same with one slot shorter (a batch of
// copies). Up to 4 MiB with nothing queued ahead a kAhead copy is over when copy_async
// returns (Note [Waited small swaps]); beyond, or when a step follows (kStepFollows), it
// runs on its own and is timed on the device. Every way every byte round trips and the
// time is positive.
TEST_F(CudaOps, SwapCopiesSmallAreWaitedLargeRunOnTheirOwnAndBothRoundTrip) {
  constexpr size_t kSlots = 24, kStride = size_t{1} << 20;
  std::byte* device = static_cast<std::byte*>(cuda_->allocate(kSlots * kStride, 256));
  ASSERT_NE(device, nullptr);
  Rng rng(78);
  std::vector<std::byte> pattern(kSlots * kStride);
  for (size_t i = 0; i < pattern.size(); i += 4096) pattern[i] = static_cast<std::byte>(rng.ints(1, 1, 255)[0]);
  for (size_t i = 1; i < pattern.size(); ++i) pattern[i] ^= static_cast<std::byte>(i * 131);
  std::vector<std::byte> host(kSlots * kStride);
  ASSERT_TRUE(cuda_->pin_host(host.data(), host.size()).ok());
  for (size_t slot_bytes : {size_t{43520}, size_t{320} << 10}) {  // 24 slots: ~1 MiB, 7.5 MiB
    for (bool pitched : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "slot " << slot_bytes << " pitched " << pitched);
      ASSERT_TRUE(cuda_->upload(device, pattern.data(), pattern.size()).ok());
      std::vector<CopyRegion> out, in;
      size_t at = 0;
      for (size_t i = 0; i < kSlots; ++i) {
        const size_t bytes = !pitched && i == kSlots - 1 ? slot_bytes - 256 : slot_bytes;
        out.push_back({host.data() + at, device + i * kStride, bytes});
        in.push_back({device + i * kStride, host.data() + at, bytes});
        at += bytes;
      }
      EXPECT_EQ(as_pitched_copy(out).has_value(), pitched);
      std::fill(host.begin(), host.end(), kPoison);
      const bool small = at <= (size_t{4} << 20);
      uint64_t waited = swaps_waited();
      Result<std::shared_ptr<QueueEvent>> copied_out = cuda_->copy_async(out, CopyQueue::kSwapOut, SwapUse::kAhead);
      ASSERT_TRUE(copied_out.ok()) << copied_out.status().to_string();
      EXPECT_EQ(swaps_waited(), waited + (small ? 1 : 0));  // waited when small: nothing was queued ahead
      if (small) {
        EXPECT_TRUE((*copied_out)->done());
      }
      ASSERT_TRUE((*copied_out)->wait().ok());
      EXPECT_GT((*copied_out)->elapsed_seconds(), 0.0);
      for (size_t i = 0, h = 0; i < kSlots; h += out[i].bytes, ++i)
        ASSERT_EQ(std::memcmp(host.data() + h, pattern.data() + i * kStride, out[i].bytes), 0) << "slot " << i;
      for (SwapUse use : {SwapUse::kAhead, SwapUse::kStepFollows}) {
        SCOPED_TRACE(use == SwapUse::kAhead ? "swap-in ahead" : "swap-in, a step follows");
        ASSERT_TRUE(cuda_->zero(device, pattern.size()).ok());
        ASSERT_TRUE(cuda_->synchronize().ok());
        waited = swaps_waited();
        Result<std::shared_ptr<QueueEvent>> copied_in = cuda_->copy_async(in, CopyQueue::kSwapIn, use);
        ASSERT_TRUE(copied_in.ok()) << copied_in.status().to_string();
        // A swap-in that a step follows is never waited for as it is issued.
        const bool waits = use == SwapUse::kAhead && small;
        EXPECT_EQ(swaps_waited(), waited + (waits ? 1 : 0));
        if (waits) {
          EXPECT_TRUE((*copied_in)->done());
        }
        ASSERT_TRUE(cuda_->compute_waits_for(**copied_in).ok());  // the download below is ordered after it
        std::vector<std::byte> back(pattern.size());
        ASSERT_TRUE(cuda_->download(back.data(), device, back.size()).ok());
        ASSERT_TRUE((*copied_in)->wait().ok());
        EXPECT_GT((*copied_in)->elapsed_seconds(), 0.0);
        for (size_t i = 0; i < kSlots; ++i)
          ASSERT_EQ(std::memcmp(back.data() + i * kStride, pattern.data() + i * kStride, in[i].bytes), 0) << "slot " << i;
      }
    }
  }
  cuda_->unpin_host(host.data());
  cuda_->deallocate(device);
}

// ---------------------------------------------------------------------------------
// embedding
// ---------------------------------------------------------------------------------

OpCase embedding_case(Rng& rng, DType dtype, int64_t vocab, int64_t hidden, int64_t rows) {
  OpCase c{OpKind::kEmbedding, {}, {}, {rows, hidden}, DType::kF32, {rows, 0}};
  std::vector<int32_t> ids = rng.ints(rows, 0, static_cast<int32_t>(vocab - 1));
  ids.front() = static_cast<int32_t>(vocab - 1);  // both ends of the table
  ids.back() = 0;
  c.inputs = {stored(rng.floats(vocab * hidden), dtype, {vocab, hidden}), i32_data(ids, {rows})};
  return c;
}

TEST_F(CudaOps, EmbeddingGathersEveryStorageDtypeExactly) {
  Rng rng(100);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t vocab : {1, 79, 513})
      for (int64_t hidden : {1, 7, 128, 513})
        for (int64_t rows : {1, 17, 300}) {
          SCOPED_TRACE(::testing::Message() << dname(dtype) << " vocab=" << vocab << " hidden=" << hidden
                                            << " rows=" << rows);
          expect_matches_cpu(embedding_case(rng, dtype, vocab, hidden, rows), kExact);
        }
}

TEST_F(CudaOps, EmbeddingLargeVocabulary) {
  Rng rng(150);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(dname(dtype));
    expect_matches_cpu(embedding_case(rng, dtype, 50257, 64, 79), kExact);
  }
}

// ---------------------------------------------------------------------------------
// matmul
// ---------------------------------------------------------------------------------

TEST_F(CudaOps, MatMulAwkwardShapesEveryWeightDtypeBothLayouts) {
  Rng rng(200);
  for (DType w_dtype : {DType::kF32, DType::kF16, DType::kBF16})
    for (bool transpose_b : {true, false})
      for (int64_t m : {1, 3, 17, 128, 513})
        for (int64_t k : {1, 7, 79, 128, 513})
          for (int64_t n : {1, 3, 17, 128, 513}) {
            check_matmul(rng, m, k, n, transpose_b, w_dtype);
            if (HasFatalFailure()) return;
          }
}

TEST_F(CudaOps, MatMulModelSizedShapes) {
  Rng rng(300);
  struct Shape3 {
    int64_t m, k, n;
    bool transpose_b;
  };
  // Decode GEMV and a prefill GEMM of a 4096-wide model (nn.Linear), GPT-2's Conv1D
  // and its tied lm_head over the 50257-token vocabulary.
  const Shape3 shapes[] = {{1, 4096, 4096, true}, {79, 4096, 1024, true}, {1, 768, 2304, false},
                           {300, 768, 3072, false}, {1, 768, 50257, true}, {7, 768, 50257, true}};
  for (DType w_dtype : {DType::kF32, DType::kF16, DType::kBF16})
    for (const Shape3& s : shapes) {
      check_matmul(rng, s.m, s.k, s.n, s.transpose_b, w_dtype);
      if (HasFatalFailure()) return;
    }
}

// Decode-shaped products (1-4 rows, nn.Linear, 16-bit weights, k a multiple of 8) run
// in the GEMV kernel (cuda_gemv.cu), which rounds x to the weight's dtype itself: on an
// x that is already rounded it must agree with the CPU up to f32 summation order, far
// inside the 16-bit tolerance. k covers one chunk of 8, a partial unrolled pass, and whole
// passes plus a tail; m = 5 is the first shape past the kernel (cuBLAS), held the same.
// The bound is kF32Tol's times ten: a 136-long dot product of one output column that
// cancels to 1e-2 differs by 1.4e-5 relative between two f32 summation orders (seen on
// an H200), still a hundred times tighter than the 16-bit tolerances.
constexpr Tolerance kGemvTol{1e-4, 1e-3};
TEST_F(CudaOps, MatMulDecodeRowsByGemvAgreeWithCpuToF32Rounding) {
  Rng rng(360);
  for (DType w_dtype : {DType::kF16, DType::kBF16})
    for (int64_t m : {1, 2, 3, 4, 5})
      for (int64_t k : {8, 136, 1032, 2304, 2560, 4104})  // 2304, 2560: rounds of 9 and 10 loads at one row
        for (int64_t n : {1, 9, 257}) {
          SCOPED_TRACE(::testing::Message() << "m=" << m << " k=" << k << " n=" << n << " w=" << dname(w_dtype));
          OpCase c{OpKind::kMatMul, OpAttrs{.transpose_b = true}, {}, {m, n}, DType::kF32, {m, 0}};
          c.inputs = {f32_data(round_through(rng.floats(m * k), w_dtype), {m, k}),
                      stored(rng.floats(k * n), w_dtype, Shape{n, k})};
          expect_matches_cpu(c, kGemvTol);
          if (HasFatalFailure()) return;
        }
}

// matmul_add is matmul then add (the residual added in f32 as the product is written):
// bit for bit on the GEMV's row counts and on cuBLAS's, and near the CPU.
TEST_F(CudaOps, MatMulAddEqualsMatMulThenAddBitForBit) {
  Rng rng(420);
  const int64_t k = 136, n = 77;
  for (DType w_dtype : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t m : {1, 3, 17}) {
      SCOPED_TRACE(::testing::Message() << "m=" << m << " w=" << dname(w_dtype));
      const HostData x = f32_data(round_through(rng.floats(m * k), w_dtype), {m, k});
      const HostData w = stored(rng.floats(k * n), w_dtype, Shape{n, k});
      const HostData residual = f32_data(rng.floats(m * n), {m, n});
      const OpAttrs attrs{.transpose_b = true};
      const OpRun product = run_on(*cuda_, OpCase{OpKind::kMatMul, attrs, {x, w}, {m, n}, DType::kF32, {m, 0}});
      ASSERT_TRUE(product.status.ok()) << product.status.to_string();
      const OpRun sum = run_on(*cuda_, OpCase{OpKind::kAdd, {}, {residual, product.output}, {m, n}, DType::kF32, {m, 0}});
      ASSERT_TRUE(sum.status.ok()) << sum.status.to_string();
      const OpCase fused{OpKind::kMatMulAdd, attrs, {x, w, residual}, {m, n}, DType::kF32, {m, 0}};
      const OpRun got = run_on(*cuda_, fused);
      ASSERT_TRUE(got.status.ok()) << got.status.to_string();
      EXPECT_EQ(got.output.bytes, sum.output.bytes);
      expect_matches_cpu(fused, compute_tolerance(w_dtype));
      if (HasFatalFailure()) return;
    }
}

// The GEMV rounds x to the weight's dtype itself: given x straight from f32, it must
// agree with the CPU product of the rounded x (the GEMM path's narrowing) up to f32
// summation order, for every row count it takes.
TEST_F(CudaOps, MatMulDecodeRowsByGemvRoundTheActivationItself) {
  Rng rng(365);
  const int64_t k = 1032, n = 77;
  for (DType w_dtype : {DType::kF16, DType::kBF16})
    for (int64_t m : {1, 2, 3, 4}) {
      SCOPED_TRACE(::testing::Message() << "m=" << m << " w=" << dname(w_dtype));
      const std::vector<float> x = rng.floats(m * k);
      const HostData w = stored(rng.floats(n * k), w_dtype, {n, k});
      DeviceBuffer xd(*cuda_, sz(m * k) * 4), wd(*cuda_, w.nbytes()), outd(*cuda_, sz(m * n) * 4);
      ASSERT_TRUE(cuda_->upload(xd.data(), x.data(), x.size() * 4).ok());
      ASSERT_TRUE(cuda_->upload(wd.data(), w.bytes.data(), w.nbytes()).ok());
      OpAttrs attrs;
      attrs.transpose_b = true;
      const TensorView xv = TensorView::contiguous(xd.data(), {m, k}, DType::kF32);
      const TensorView wv = TensorView::contiguous(wd.data(), {n, k}, w_dtype, LifetimeClass::kWeight);
      const TensorView* inputs[] = {&xv, &wv};
      ASSERT_TRUE(cuda_->run_op(OpKind::kMatMul, attrs, inputs, TensorView::contiguous(outd.data(), {m, n}, DType::kF32), {}).ok());
      ASSERT_TRUE(cuda_->synchronize().ok());
      std::vector<float> got(sz(m * n));
      ASSERT_TRUE(cuda_->download(got.data(), outd.data(), got.size() * 4).ok());
      std::vector<float> xr = round_through(x, w_dtype), wr = as_f32(w), want(sz(m * n));
      const TensorView xrv = TensorView::contiguous(xr.data(), {m, k}, DType::kF32);
      const TensorView wrv = TensorView::contiguous(wr.data(), {n, k}, DType::kF32);
      const TensorView* ref_in[] = {&xrv, &wrv};
      ASSERT_TRUE(cpu_->run_op(OpKind::kMatMul, attrs, ref_in, TensorView::contiguous(want.data(), {m, n}, DType::kF32), {}).ok());
      for (size_t e = 0; e < want.size(); ++e) ASSERT_NEAR(got[e], want[e], 1e-4 * (1.0 + std::fabs(want[e]))) << "element " << e;
    }
}

// Two 16-bit GEMMs of one input narrow it once (Note [Narrowed activations] in
// cuda_backend.h); an op that writes the input in between, or a GEMM of another input,
// must make the next GEMM narrow afresh. One sequence, no copy in between (a copy
// forgets the narrowing), checked against the CPU on the x each GEMM should have seen.
TEST_F(CudaOps, MatMulsOfOneInputReuseItsNarrowingOnlyWhileItIsUnchanged) {
  Rng rng(350);
  const int64_t m = 3, k = 64, n = 32;
  for (DType w_dtype : {DType::kF16, DType::kBF16}) {
    DeviceBuffer x(*cuda_, sz(m * k) * 4), y(*cuda_, sz(m * k) * 4), w1(*cuda_, sz(n * k) * 2),
        w2(*cuda_, sz(n * k) * 2), outs(*cuda_, 5 * sz(m * n) * 4);
    const TensorView xv = TensorView::contiguous(x.data(), {m, k}, DType::kF32);
    const TensorView yv = TensorView::contiguous(y.data(), {m, k}, DType::kF32);
    const TensorView w1v = TensorView::contiguous(w1.data(), {n, k}, w_dtype, LifetimeClass::kWeight);
    const TensorView w2v = TensorView::contiguous(w2.data(), {n, k}, w_dtype, LifetimeClass::kWeight);
    const HostData w1h = stored(rng.floats(n * k), w_dtype, {n, k}), w2h = stored(rng.floats(n * k), w_dtype, {n, k});
    const std::vector<float> x0 = rng.floats(m * k), yh = rng.floats(m * k);
    ASSERT_TRUE(cuda_->upload(w1.data(), w1h.bytes.data(), w1h.nbytes()).ok());
    ASSERT_TRUE(cuda_->upload(w2.data(), w2h.bytes.data(), w2h.nbytes()).ok());
    ASSERT_TRUE(cuda_->upload(x.data(), x0.data(), x0.size() * 4).ok());
    ASSERT_TRUE(cuda_->upload(y.data(), yh.data(), yh.size() * 4).ok());
    std::vector<float> x1 = x0;  // x after x += y
    for (size_t i = 0; i < x1.size(); ++i) x1[i] += yh[i];

    OpAttrs attrs;
    attrs.transpose_b = true;
    auto out_view = [&](int i) {
      return TensorView::contiguous(static_cast<float*>(outs.data()) + i * m * n, {m, n}, DType::kF32);
    };
    auto mm = [&](const TensorView& in, const TensorView& w, int i) {
      const TensorView* inputs[] = {&in, &w};
      return cuda_->run_op(OpKind::kMatMul, attrs, inputs, out_view(i), {});
    };
    ASSERT_TRUE(mm(xv, w1v, 0).ok());  // narrows x
    ASSERT_TRUE(mm(xv, w2v, 1).ok());  // reuses it
    const TensorView* add_in[] = {&xv, &yv};
    ASSERT_TRUE(cuda_->run_op(OpKind::kAdd, {}, add_in, xv, {}).ok());  // x += y, in place
    ASSERT_TRUE(mm(xv, w1v, 2).ok());  // must narrow the new x
    ASSERT_TRUE(mm(yv, w2v, 3).ok());  // another input
    ASSERT_TRUE(mm(xv, w2v, 4).ok());  // x again, after y's narrowing
    ASSERT_TRUE(cuda_->synchronize().ok());
    std::vector<float> got(5 * sz(m * n));
    ASSERT_TRUE(cuda_->download(got.data(), outs.data(), got.size() * 4).ok());

    const struct {
      const std::vector<float>* x;
      const HostData* w;
      const char* what;
    } expected[] = {{&x0, &w1h, "first GEMM"}, {&x0, &w2h, "second GEMM of x"}, {&x1, &w1h, "after x was written"},
                    {&yh, &w2h, "GEMM of y"}, {&x1, &w2h, "x after y"}};
    for (int i = 0; i < 5; ++i) {
      std::vector<float> xr = round_through(*expected[i].x, w_dtype), wr = as_f32(*expected[i].w), want(sz(m * n));
      const TensorView xrv = TensorView::contiguous(xr.data(), {m, k}, DType::kF32);
      const TensorView wrv = TensorView::contiguous(wr.data(), {n, k}, DType::kF32);
      const TensorView* ref_in[] = {&xrv, &wrv};
      ASSERT_TRUE(cpu_->run_op(OpKind::kMatMul, attrs, ref_in, TensorView::contiguous(want.data(), {m, n}, DType::kF32), {}).ok());
      for (size_t e = 0; e < want.size(); ++e)
        ASSERT_NEAR(got[sz(i * m * n) + e], want[e], 1e-3 * (1.0 + std::fabs(want[e])))
            << dname(w_dtype) << ", " << expected[i].what << ", element " << e;
    }
  }
}

// ---------------------------------------------------------------------------------
// add, mul
// ---------------------------------------------------------------------------------

const int64_t kAwkward[] = {1, 3, 7, 17, 79, 128, 513};

TEST_F(CudaOps, AddSameShapeExactly) {
  Rng rng(400);
  for (int64_t rows : kAwkward)
    for (int64_t cols : kAwkward) {
      SCOPED_TRACE(::testing::Message() << rows << "x" << cols);
      OpCase c{OpKind::kAdd, {}, {}, {rows, cols}, DType::kF32, {rows, 0}};
      c.inputs = {f32_data(rng.floats(rows * cols), {rows, cols}), f32_data(rng.floats(rows * cols), {rows, cols})};
      expect_matches_cpu(c, kExact);
    }
}

TEST_F(CudaOps, AddRowBroadcastBiasEveryStorageDtypeExactly) {
  Rng rng(500);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t rows : kAwkward)
      for (int64_t cols : {1, 7, 79, 513, 3072}) {
        SCOPED_TRACE(::testing::Message() << dname(dtype) << " " << rows << "x" << cols);
        OpCase c{OpKind::kAdd, {}, {}, {rows, cols}, DType::kF32, {rows, 0}};
        c.inputs = {f32_data(rng.floats(rows * cols), {rows, cols}), stored(rng.floats(cols), dtype, {cols})};
        expect_matches_cpu(c, kExact);
      }
}

TEST_F(CudaOps, MulSameShapeExactly) {
  Rng rng(600);
  for (int64_t rows : kAwkward)
    for (int64_t cols : kAwkward) {
      SCOPED_TRACE(::testing::Message() << rows << "x" << cols);
      OpCase c{OpKind::kMul, {}, {}, {rows, cols}, DType::kF32, {rows, 0}};
      c.inputs = {f32_data(rng.floats(rows * cols, -3, 3), {rows, cols}),
                  f32_data(rng.floats(rows * cols, -3, 3), {rows, cols})};
      expect_matches_cpu(c, kExact);
    }
}

// ---------------------------------------------------------------------------------
// layernorm, rmsnorm (gamma / beta stored in every dtype; f32 arithmetic)
// ---------------------------------------------------------------------------------

std::vector<float> with_offset(std::vector<float> v, float offset) {
  for (size_t i = 0; i < v.size(); i += 2) v[i] += offset;  // a non-zero mean
  return v;
}

TEST_F(CudaOps, LayerNormEveryWeightDtype) {
  Rng rng(700);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t rows : {1, 3, 17, 300})
      for (int64_t h : {1, 3, 7, 79, 128, 513, 768, 4096}) {
        SCOPED_TRACE(::testing::Message() << dname(dtype) << " " << rows << "x" << h);
        OpCase c{OpKind::kLayerNorm, OpAttrs{.eps = 1e-5f}, {}, {rows, h}, DType::kF32, {rows, 0}};
        c.inputs = {f32_data(with_offset(rng.floats(rows * h, -2, 2), 0.75f), {rows, h}),
                    stored(rng.floats(h, 0.5f, 1.5f), dtype, {h}), stored(rng.floats(h), dtype, {h})};
        expect_matches_cpu(c, kF32Tol);
      }
}

TEST_F(CudaOps, RmsNormEveryWeightDtype) {
  Rng rng(800);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t rows : {1, 3, 17, 300})
      for (int64_t h : {1, 3, 7, 79, 128, 513, 4096}) {
        SCOPED_TRACE(::testing::Message() << dname(dtype) << " " << rows << "x" << h);
        OpCase c{OpKind::kRmsNorm, OpAttrs{.eps = 1e-6f}, {}, {rows, h}, DType::kF32, {rows, 0}};
        c.inputs = {f32_data(with_offset(rng.floats(rows * h, -2, 2), 0.5f), {rows, h}),
                    stored(rng.floats(h, 0.5f, 1.5f), dtype, {h})};
        expect_matches_cpu(c, kF32Tol);
      }
}

// ---------------------------------------------------------------------------------
// gelu_new, silu (values over [-8, 8]: both tails and the middle)
// ---------------------------------------------------------------------------------

TEST_F(CudaOps, GeluNewAndSiluElementwise) {
  Rng rng(900);
  for (OpKind op : {OpKind::kGeluNew, OpKind::kSilu})
    for (int64_t rows : {1, 3, 17, 300})
      for (int64_t cols : {1, 7, 79, 513, 3072}) {
        SCOPED_TRACE(::testing::Message() << op_name(op) << " " << rows << "x" << cols);
        OpCase c{op, {}, {}, {rows, cols}, DType::kF32, {rows, 0}};
        c.inputs = {f32_data(rng.floats(rows * cols, -8, 8), {rows, cols})};
        expect_matches_cpu(c, kF32Tol);
      }
}

TEST_F(CudaOps, SiluMulElementwise) {
  Rng rng(950);
  for (int64_t rows : {1, 3, 17, 300})
    for (int64_t cols : {1, 7, 79, 513, 13824}) {
      SCOPED_TRACE(::testing::Message() << rows << "x" << cols);
      OpCase c{OpKind::kSiluMul, {}, {}, {rows, cols}, DType::kF32, {rows, 0}};
      c.inputs = {f32_data(rng.floats(rows * cols, -8, 8), {rows, cols}), f32_data(rng.floats(rows * cols, -4, 4), {rows, cols})};
      expect_matches_cpu(c, kF32Tol);
    }
}

// ---------------------------------------------------------------------------------
// rope
// ---------------------------------------------------------------------------------

OpCase rope_case(Rng& rng, int64_t rows, int64_t heads, int64_t head_dim, float theta, int32_t max_pos) {
  OpCase c{OpKind::kRope, OpAttrs{.head_dim = head_dim, .rope_theta = theta}, {}, {rows, heads * head_dim},
           DType::kF32, {rows, 0}};
  // Arbitrary positions per row (a batched decode step carries one per session).
  c.inputs = {f32_data(rng.floats(rows * heads * head_dim, -2, 2), {rows, heads * head_dim}),
              i32_data(rng.ints(rows, 0, max_pos), {rows})};
  return c;
}

// head_dim 512 is past the table the launcher passes (256): the kernel computes the
// inverse frequencies itself.
TEST_F(CudaOps, RopeSmallPositions) {
  Rng rng(1000);
  for (int64_t head_dim : {2, 64, 128, 512})
    for (int64_t heads : {1, 3, 32})
      for (int64_t rows : {1, 7, 79})
        for (float theta : {10000.0f, 500000.0f}) {
          SCOPED_TRACE(::testing::Message() << "head_dim=" << head_dim << " heads=" << heads << " rows=" << rows
                                            << " theta=" << theta);
          expect_matches_cpu(rope_case(rng, rows, heads, head_dim, theta, 63), kF32Tol);
        }
}

TEST_F(CudaOps, RopeLargePositions) {
  // The f32 angle pos * inv_freq carries ~pos * 2^-24 rad of rounding, and inv_freq
  // may differ by one ulp between correct implementations: the bound grows with the
  // position (8191 * 2^-24 * 4 ~ 2e-3).
  constexpr int32_t kMaxPos = 8191;
  const double bound = 4.0 * kMaxPos * std::ldexp(1.0, -24) + 1e-5;
  Rng rng(1100);
  for (int64_t head_dim : {64, 128})
    for (float theta : {10000.0f, 500000.0f}) {
      SCOPED_TRACE(::testing::Message() << "head_dim=" << head_dim << " theta=" << theta);
      expect_matches_cpu(rope_case(rng, 300, 8, head_dim, theta, kMaxPos), Tolerance{bound, 4 * bound});
    }
}

// ---------------------------------------------------------------------------------
// softmax
// ---------------------------------------------------------------------------------

// Softmax is checked against float64 softmax, both backends within the f32 bound. (The
// CPU once summed a row in f32 one element after another, which drifted with the width
// — 4.7e-5 in |diff|/|ref| at 50257 — past that bound; it now sums in double.)
HostData ref_softmax(const HostData& x) {
  const std::vector<float> v = as_f32(x);
  const int64_t rows = x.shape[0], cols = x.shape[1];
  std::vector<float> out(v.size());
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = v.data() + r * cols;
    const double mx = *std::max_element(in, in + cols);
    double sum = 0;
    for (int64_t i = 0; i < cols; ++i) sum += std::exp(double(in[i]) - mx);
    for (int64_t i = 0; i < cols; ++i) out[sz(r * cols + i)] = static_cast<float>(std::exp(double(in[i]) - mx) / sum);
  }
  return f32_data(out, x.shape);
}

TEST_F(CudaOps, SoftmaxAwkwardWidths) {
  Rng rng(1200);
  for (int64_t rows : {1, 3, 17, 79})
    for (int64_t cols : {1, 3, 7, 17, 79, 128, 513, 4099, 50257}) {
      SCOPED_TRACE(::testing::Message() << rows << "x" << cols);
      OpCase c{OpKind::kSoftmax, {}, {}, {rows, cols}, DType::kF32, {rows, 0}};
      c.inputs = {f32_data(rng.floats(rows * cols, -8, 8), {rows, cols})};
      expect_matches_reference(c, ref_softmax(c.inputs[0]), kF32Tol, kF32Tol);
    }
}

TEST_F(CudaOps, SoftmaxLargeLogitsNeedTheMaxSubtracted) {
  // exp(100) overflows f32: a kernel that does not subtract the row max gives inf/NaN.
  Rng rng(1300);
  for (int64_t cols : {7, 513, 50257}) {
    SCOPED_TRACE(cols);
    OpCase c{OpKind::kSoftmax, {}, {}, {3, cols}, DType::kF32, {3, 0}};
    c.inputs = {f32_data(rng.floats(3 * cols, 90, 110), {3, cols})};
    expect_matches_reference(c, ref_softmax(c.inputs[0]), kF32Tol, kF32Tol);
  }
}

// ---------------------------------------------------------------------------------
// slice, rows, concat_rows, last_row (data movement: exact)
// ---------------------------------------------------------------------------------

TEST_F(CudaOps, SliceColumnsExactly) {
  Rng rng(1400);
  struct Cut {
    int64_t cols, start, length;
  };
  // GPT-2's q / k / v thirds of c_attn, and odd starts and lengths.
  const Cut cuts[] = {{2304, 0, 768}, {2304, 768, 768}, {2304, 1536, 768}, {79, 0, 79}, {79, 78, 1},
                      {79, 3, 17},    {513, 1, 511},    {7, 6, 1}};
  for (int64_t rows : {1, 7, 300})
    for (const Cut& cut : cuts) {
      SCOPED_TRACE(::testing::Message() << rows << "x" << cut.cols << " [" << cut.start << ", +" << cut.length << ")");
      OpCase c{OpKind::kSlice, OpAttrs{.start = cut.start, .length = cut.length}, {}, {rows, cut.length},
               DType::kF32, {rows, 0}};
      c.inputs = {f32_data(rng.floats(rows * cut.cols), {rows, cut.cols})};
      expect_matches_cpu(c, kExact);
    }
}

TEST_F(CudaOps, RowsOfEveryDtypeAndRankExactly) {
  Rng rng(1500);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16, DType::kI32})
    for (int64_t cols : {0, 1, 7, 513})  // 0: a rank-1 tensor
      for (int64_t total : {1, 17, 300}) {
        for (const auto& [start, length] : std::vector<std::pair<int64_t, int64_t>>{
                 {0, total}, {total - 1, 1}, {total / 2, total - total / 2}, {0, 1}}) {
          SCOPED_TRACE(::testing::Message() << dname(dtype) << " total=" << total << " cols=" << cols << " rows ["
                                            << start << ", +" << length << ")");
          const Shape in_shape = cols == 0 ? Shape{total} : Shape{total, cols};
          const Shape out_shape = cols == 0 ? Shape{length} : Shape{length, cols};
          OpCase c{OpKind::kRows, OpAttrs{.start = start, .length = length}, {}, out_shape, dtype, {length, 0}};
          const int64_t n = num_elements(in_shape);
          c.inputs = {dtype == DType::kI32 ? i32_data(rng.ints(n, -100000, 100000), in_shape)
                                           : stored(rng.floats(n), dtype, in_shape)};
          expect_matches_cpu(c, kExact);
        }
      }
}

TEST_F(CudaOps, ConcatRowsExactly) {
  Rng rng(1600);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kI32})
    for (int64_t cols : {1, 7, 513})
      for (int64_t ra : {1, 17})
        for (int64_t rb : {1, 3, 79}) {
          SCOPED_TRACE(::testing::Message() << dname(dtype) << " " << ra << "+" << rb << " x" << cols);
          OpCase c{OpKind::kConcatRows, {}, {}, {ra + rb, cols}, dtype, {ra + rb, 0}};
          auto make = [&](int64_t r) {
            return dtype == DType::kI32 ? i32_data(rng.ints(r * cols, -1000, 1000), {r, cols})
                                        : stored(rng.floats(r * cols), dtype, {r, cols});
          };
          c.inputs = {make(ra), make(rb)};
          expect_matches_cpu(c, kExact);
        }
}

TEST_F(CudaOps, LastRowExactly) {
  Rng rng(1700);
  for (int64_t rows : {1, 7, 300})
    for (int64_t cols : {1, 79, 50257}) {
      SCOPED_TRACE(::testing::Message() << rows << "x" << cols);
      OpCase c{OpKind::kLastRow, {}, {}, {1, cols}, DType::kF32, {rows, 0}};
      c.inputs = {f32_data(rng.floats(rows * cols), {rows, cols})};
      expect_matches_cpu(c, kExact);
    }
}

// ---------------------------------------------------------------------------------
// argmax
// ---------------------------------------------------------------------------------

TEST_F(CudaOps, ArgmaxAwkwardWidths) {
  Rng rng(1800);
  for (int64_t rows : {1, 3, 17, 79})
    for (int64_t cols : {1, 3, 7, 17, 79, 128, 513, 4099, 50257}) {
      SCOPED_TRACE(::testing::Message() << rows << "x" << cols);
      OpCase c{OpKind::kArgmax, {}, {}, {rows}, DType::kI32, {rows, 0}};
      c.inputs = {f32_data(rng.floats(rows * cols, -20, 20), {rows, cols})};
      expect_matches_cpu(c, kExact);
    }
}

TEST_F(CudaOps, ArgmaxTiesGoToTheFirstMaximum) {
  // The maximum appears several times in each row, at positions a parallel reduction
  // sees in other orders (both ends, across warps and blocks); the first one wins.
  Rng rng(1900);
  for (int64_t cols : {2, 33, 513, 50257}) {
    SCOPED_TRACE(cols);
    const int64_t rows = 4;
    std::vector<float> x = rng.floats(rows * cols, -1, 1);
    for (int64_t r = 0; r < rows; ++r) {
      const std::vector<int32_t> at = rng.ints(3, 0, static_cast<int32_t>(cols - 1));
      for (int32_t col : at) x[sz(r * cols + col)] = 5.0f;
      x[sz(r * cols + cols - 1)] = 5.0f;  // always a tie at the end
    }
    OpCase c{OpKind::kArgmax, {}, {}, {rows}, DType::kI32, {rows, 0}};
    c.inputs = {f32_data(x, {rows, cols})};
    expect_matches_cpu(c, kExact);
  }
}

// ---------------------------------------------------------------------------------
// kv_append (output aliases the cache; exact)
// ---------------------------------------------------------------------------------

// cache[capacity, width] in `dtype`: rows before `past` random (earlier tokens), rows
// [past, past + seq) NaN (poison: must be written), rows after random (must survive).
OpCase kv_append_case(Rng& rng, DType dtype, int64_t capacity, int64_t width, int64_t past, int64_t seq) {
  HostData cache = stored(rng.floats(capacity * width), dtype, {capacity, width});
  const size_t row_bytes = sz(width) * dtype_size(dtype);
  std::fill_n(cache.bytes.begin() + static_cast<ptrdiff_t>(sz(past) * row_bytes), sz(seq) * row_bytes, kPoison);
  OpCase c{OpKind::kKvAppend, {}, {}, {capacity, width}, dtype, {seq, past}};
  c.inputs = {std::move(cache), f32_data(rng.floats(seq * width, -4, 4), {seq, width}),
              i32_data(consecutive(past, seq), {seq})};
  return c;
}

TEST_F(CudaOps, KvAppendEveryCacheDtypeExactly) {
  Rng rng(2000);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t width : {64, 128, 256, 1024})
      for (int64_t seq : {1, 7, 79})
        for (int64_t past : {int64_t{0}, int64_t{5}, int64_t{2048 - 79}}) {
          const int64_t capacity = std::max<int64_t>(2048, past + seq);
          SCOPED_TRACE(::testing::Message() << dname(dtype) << " width=" << width << " seq=" << seq
                                            << " past=" << past << " capacity=" << capacity);
          expect_matches_cpu(kv_append_case(rng, dtype, capacity, width, past, seq), kExact);
        }
  // The last rows of a full cache.
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(dname(dtype));
    expect_matches_cpu(kv_append_case(rng, dtype, 17, 128, 10, 7), kExact);
  }
}

// ---------------------------------------------------------------------------------
// attention
// ---------------------------------------------------------------------------------

// q[seq, n_heads*head_dim] over caches [capacity, n_kv_heads*head_dim] of `dtype`
// holding past + seq valid rows; the rest of the capacity is NaN (must not be read).
OpCase attention_case(Rng& rng, DType dtype, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, int64_t seq,
                      int64_t past, int64_t capacity) {
  const int64_t kv_width = n_kv_heads * head_dim, q_width = n_heads * head_dim, valid = past + seq;
  auto cache = [&] {
    HostData h = stored(rng.floats(capacity * kv_width, -2, 2), dtype, {capacity, kv_width});
    std::fill(h.bytes.begin() + static_cast<ptrdiff_t>(sz(valid * kv_width) * dtype_size(dtype)), h.bytes.end(),
              kPoison);
    return h;
  };
  OpAttrs attrs{.n_heads = n_heads, .n_kv_heads = n_kv_heads, .head_dim = head_dim,
                .scale = 1.0f / std::sqrt(static_cast<float>(head_dim))};
  OpCase c{OpKind::kAttention, attrs, {}, {seq, q_width}, DType::kF32, {seq, past}};
  // q in [-3, 3] with k in [-2, 2]: scores spread over several units, so the softmax is
  // peaked, not near-uniform (which would hide a wrong scale or a wrong key).
  c.inputs = {f32_data(rng.floats(seq * q_width, -3, 3), {seq, q_width}), cache(), cache(),
              i32_data(consecutive(past, seq), {seq})};
  return c;
}

struct Heads {
  int64_t n_heads, n_kv_heads;
};
const Heads kHeadLayouts[] = {{8, 8} /* MHA */, {8, 2} /* GQA */, {8, 1} /* MQA */};

TEST_F(CudaOps, AttentionDecode) {
  Rng rng(2100);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16})
    for (const Heads& heads : kHeadLayouts)
      for (int64_t head_dim : {64, 128})
        for (int64_t context : {1, 17, 2048}) {
          // A cache with spare rows after the context, and (context 17) an exactly full one.
          const int64_t capacity = context == 17 ? context : context + 61;
          SCOPED_TRACE(::testing::Message() << dname(dtype) << " heads=" << heads.n_heads << "/" << heads.n_kv_heads
                                            << " head_dim=" << head_dim << " context=" << context
                                            << " capacity=" << capacity);
          expect_matches_cpu(attention_case(rng, dtype, heads.n_heads, heads.n_kv_heads, head_dim, 1, context - 1,
                                            capacity),
                             compute_tolerance(dtype));
          if (HasFatalFailure()) return;
        }
}

TEST_F(CudaOps, AttentionPrefill) {
  Rng rng(2200);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16})
    for (const Heads& heads : kHeadLayouts)
      for (int64_t seq : {7, 79, 300})
        for (int64_t past : {0, 211}) {
          const int64_t head_dim = seq == 79 ? 64 : 128;
          const int64_t capacity = past + seq + 13;
          SCOPED_TRACE(::testing::Message() << dname(dtype) << " heads=" << heads.n_heads << "/" << heads.n_kv_heads
                                            << " head_dim=" << head_dim << " seq=" << seq << " past=" << past);
          expect_matches_cpu(attention_case(rng, dtype, heads.n_heads, heads.n_kv_heads, head_dim, seq, past,
                                            capacity),
                             compute_tolerance(dtype));
          if (HasFatalFailure()) return;
        }
}

TEST_F(CudaOps, AttentionModelShapedHeads) {
  // GPT-2 (12 heads of 64), Llama-3-8B (32 / 8 of 128), and an odd head count.
  Rng rng(2300);
  const struct {
    int64_t n_heads, n_kv_heads, head_dim;
  } layouts[] = {{12, 12, 64}, {32, 8, 128}, {3, 1, 64}};
  for (DType dtype : {DType::kF32, DType::kF16})
    for (const auto& l : layouts)
      for (const auto& [seq, past] : std::vector<std::pair<int64_t, int64_t>>{{1, 999}, {17, 0}, {17, 100}}) {
        SCOPED_TRACE(::testing::Message() << dname(dtype) << " heads=" << l.n_heads << "/" << l.n_kv_heads
                                          << " head_dim=" << l.head_dim << " seq=" << seq << " past=" << past);
        expect_matches_cpu(attention_case(rng, dtype, l.n_heads, l.n_kv_heads, l.head_dim, seq, past, past + seq + 1),
                           compute_tolerance(dtype));
      }
}

// ---------------------------------------------------------------------------------
// batched_decode_attention: B sessions at ragged lengths, one cache pair each
// ---------------------------------------------------------------------------------

// Session b is at position pos[b]: its cache rows before pos[b] are random (earlier
// tokens), row pos[b] is NaN (must be written from k_new / v_new), the rest NaN (must
// not be read). The caches are compared bit for bit after the step, the output within
// the cache dtype's tolerance.
OpCase batched_decode_case(Rng& rng, DType dtype, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                           const std::vector<int32_t>& positions, int64_t capacity) {
  const int64_t batch = static_cast<int64_t>(positions.size());
  const int64_t kv_width = n_kv_heads * head_dim, q_width = n_heads * head_dim;
  OpAttrs attrs{.n_heads = n_heads, .n_kv_heads = n_kv_heads, .head_dim = head_dim,
                .scale = 1.0f / std::sqrt(static_cast<float>(head_dim))};
  // Shapes are constant in a batched step; the positions carry the lengths (as the
  // Runtime binds it: seq 1, past 0).
  OpCase c{OpKind::kBatchedDecodeAttention, attrs, {}, {batch, q_width}, DType::kF32, {1, 0}};
  c.inputs = {f32_data(rng.floats(batch * q_width, -3, 3), {batch, q_width}),
              f32_data(rng.floats(batch * kv_width, -2, 2), {batch, kv_width}),
              f32_data(rng.floats(batch * kv_width, -2, 2), {batch, kv_width}), i32_data(positions, {batch})};
  for (int64_t b = 0; b < batch; ++b)
    for (int kv = 0; kv < 2; ++kv) {
      HostData cache = stored(rng.floats(capacity * kv_width, -2, 2), dtype, {capacity, kv_width});
      const int64_t valid = std::clamp<int64_t>(positions[sz(b)], 0, capacity);
      std::fill(cache.bytes.begin() + static_cast<ptrdiff_t>(sz(valid * kv_width) * dtype_size(dtype)),
                cache.bytes.end(), kPoison);
      c.written_inputs.push_back(c.inputs.size());
      c.inputs.push_back(std::move(cache));
    }
  return c;
}

TEST_F(CudaOps, BatchedDecodeAttentionRaggedLengths) {
  Rng rng(2350);
  const int64_t capacity = 2048;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16})
    for (const Heads& heads : kHeadLayouts)
      for (int64_t head_dim : {64, 128})
        for (int64_t batch : {1, 3, 17}) {
          // Ragged: the first session is new (position 0), the last fills its cache.
          std::vector<int32_t> positions = rng.ints(batch, 0, static_cast<int32_t>(capacity - 1));
          positions.front() = 0;
          positions.back() = static_cast<int32_t>(capacity - 1);
          SCOPED_TRACE(::testing::Message() << dname(dtype) << " heads=" << heads.n_heads << "/" << heads.n_kv_heads
                                            << " head_dim=" << head_dim << " batch=" << batch);
          expect_matches_cpu(
              batched_decode_case(rng, dtype, heads.n_heads, heads.n_kv_heads, head_dim, positions, capacity),
              compute_tolerance(dtype));
          if (HasFatalFailure()) return;
        }
}

TEST_F(CudaOps, BatchedDecodeAttentionEqualSessionsAgree) {
  // Every session at the same position with the same data: every output row the same
  // (a row that read another session's cache, or the wrong rows, would not be). Checked
  // against the CPU as well.
  Rng rng(2360);
  const int64_t batch = 5, capacity = 79, n_heads = 8, n_kv_heads = 2, head_dim = 64;
  OpCase c = batched_decode_case(rng, DType::kF16, n_heads, n_kv_heads, head_dim,
                                 std::vector<int32_t>(batch, 40), capacity);
  const int64_t q_width = n_heads * head_dim, kv_width = n_kv_heads * head_dim;
  for (size_t input : {size_t{0}, size_t{1}, size_t{2}}) {
    const int64_t width = input == 0 ? q_width : kv_width;
    const size_t row_bytes = sz(width) * sizeof(float);
    for (int64_t b = 1; b < batch; ++b)
      std::memcpy(c.inputs[input].bytes.data() + sz(b) * row_bytes, c.inputs[input].bytes.data(), row_bytes);
  }
  for (int64_t b = 1; b < batch; ++b) {
    c.inputs[sz(4 + 2 * b)] = c.inputs[4];
    c.inputs[sz(5 + 2 * b)] = c.inputs[5];
  }
  expect_matches_cpu(c, kF16Tol);
  const OpRun got = run_on(*cuda_, c);
  ASSERT_TRUE(got.status.ok()) << got.status.to_string();
  // Equal to f32 rounding, not bit for bit: a split-K decode kernel may sum in any order.
  const size_t row_bytes = sz(q_width) * sizeof(float);
  auto row = [&](int64_t b) {
    HostData r{DType::kF32, {1, q_width}, std::vector<std::byte>(row_bytes)};
    std::memcpy(r.bytes.data(), got.output.bytes.data() + sz(b) * row_bytes, row_bytes);
    return r;
  };
  for (int64_t b = 1; b < batch; ++b) EXPECT_TRUE(close_to(row(b), row(0), kF32Tol)) << "row " << b;
}

// ---------------------------------------------------------------------------------
// Data errors: reported by run_op or synchronize, once; the backend works afterwards
// ---------------------------------------------------------------------------------

TEST_F(CudaOps, EmbeddingIdOutsideTheVocabularyIsAnErrorAndTheBackendRecovers) {
  Rng rng(2400);
  for (int32_t bad : {17, 1234, std::numeric_limits<int32_t>::max(), -1, std::numeric_limits<int32_t>::min()}) {
    SCOPED_TRACE(::testing::Message() << "id " << bad);
    OpCase c = embedding_case(rng, DType::kF32, 17, 64, 5);
    std::vector<int32_t> ids = as_i32(c.inputs[1]);
    ids[2] = bad;
    c.inputs[1] = i32_data(ids, {5});
    expect_data_error(c);
    // Still works: a good case right after.
    expect_matches_cpu(embedding_case(rng, DType::kF16, 17, 64, 5), kExact);
  }
}

TEST_F(CudaOps, AttentionPastTheKvCapacityIsAnErrorAndTheBackendRecovers) {
  Rng rng(2500);
  for (DType dtype : {DType::kF32, DType::kF16}) {
    SCOPED_TRACE(dname(dtype));
    const int64_t capacity = 33;
    // Decode at position == capacity; prefill whose last row falls one past the end.
    for (const auto& [seq, past] : std::vector<std::pair<int64_t, int64_t>>{{1, capacity}, {7, capacity - 6}}) {
      SCOPED_TRACE(::testing::Message() << "seq=" << seq << " past=" << past);
      // Caches of `capacity` rows; the positions then point past their end.
      OpCase c = attention_case(rng, dtype, 8, 2, 64, seq, 0, capacity);
      c.inputs[3] = i32_data(consecutive(past, seq), {seq});
      c.bindings.past = past;
      expect_data_error(c);
      expect_matches_cpu(attention_case(rng, dtype, 8, 2, 64, seq, capacity - seq, capacity),
                         compute_tolerance(dtype));
    }
  }
}

TEST_F(CudaOps, KvAppendPastTheCapacityIsAnErrorAndTheBackendRecovers) {
  Rng rng(2600);
  const int64_t capacity = 20;
  for (const auto& [seq, past] : std::vector<std::pair<int64_t, int64_t>>{{1, capacity}, {7, capacity - 6}}) {
    SCOPED_TRACE(::testing::Message() << "seq=" << seq << " past=" << past);
    OpCase c = kv_append_case(rng, DType::kF16, capacity, 64, 0, seq);
    c.inputs[2] = i32_data(consecutive(past, seq), {seq});
    c.bindings.past = past;
    expect_data_error(c);
    expect_matches_cpu(kv_append_case(rng, DType::kF16, capacity, 64, capacity - seq, seq), kExact);
  }
}

TEST_F(CudaOps, NonConsecutivePositionsAreAnErrorAndTheBackendRecovers) {
  // kv_append and attention take one sequence: positions past, past + 1, ...
  Rng rng(2630);
  const std::vector<int32_t> bad = {5, 6, 8, 9};
  OpCase append = kv_append_case(rng, DType::kBF16, 40, 64, 5, 4);
  append.inputs[2] = i32_data(bad, {4});
  expect_data_error(append);
  OpCase attend = attention_case(rng, DType::kBF16, 8, 2, 64, 4, 5, 40);
  attend.inputs[3] = i32_data(bad, {4});
  expect_data_error(attend);
  expect_matches_cpu(attention_case(rng, DType::kBF16, 8, 2, 64, 4, 5, 40), kBf16Tol);
}

TEST_F(CudaOps, BatchedDecodeAttentionPastTheCapacityIsAnErrorAndTheBackendRecovers) {
  Rng rng(2650);
  const int64_t capacity = 33;
  for (int32_t bad : {static_cast<int32_t>(capacity), -1}) {
    SCOPED_TRACE(::testing::Message() << "position " << bad);
    // One bad session among good ones.
    expect_data_error(batched_decode_case(rng, DType::kF16, 8, 2, 64, {0, 5, bad, 32}, capacity));
    expect_matches_cpu(batched_decode_case(rng, DType::kF16, 8, 2, 64, {0, 5, 31, 32}, capacity), kF16Tol);
  }
}

TEST_F(CudaOps, RopeNegativePositionIsAnErrorAndTheBackendRecovers) {
  Rng rng(2700);
  OpCase c = rope_case(rng, 5, 4, 64, 10000.0f, 100);
  std::vector<int32_t> pos = as_i32(c.inputs[1]);
  pos[3] = -1;
  c.inputs[1] = i32_data(pos, {5});
  expect_data_error(c);
  expect_matches_cpu(rope_case(rng, 5, 4, 64, 10000.0f, 63), kF32Tol);
}

// ---------------------------------------------------------------------------------
// Golden fixtures through a Runtime on the CUDA device (see tests/golden/README.md):
// f32, the same greedy tokens, every logit within 1e-3 of transformers'.
// ---------------------------------------------------------------------------------

using golden::Expected;
using golden::read_expected;

class CudaGolden : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    Result<std::unique_ptr<Backend>> cuda = make_backend(DeviceKind::kCuda);
    if (!cuda.ok()) GTEST_SKIP() << "no CUDA backend: " << cuda.status().to_string();
  }
};

TEST_P(CudaGolden, GreedyTokensAndLogitsMatchTransformers) {
  const std::filesystem::path dir = std::filesystem::path(DJINN_GOLDEN_DIR) / GetParam();
  const Expected expected = read_expected(dir);
  RuntimeOptions options;
  options.device = DeviceKind::kCuda;
  options.device_mem_gb = 1;
  Result<std::unique_ptr<Runtime>> created = Runtime::create(options);
  ASSERT_TRUE(created.ok()) << created.status().to_string();
  std::unique_ptr<Runtime> runtime = std::move(created).value();
  ASSERT_EQ(runtime->backend().device(), DeviceKind::kCuda);

  const Result<ModelId> model = runtime->load_model(dir.string(), {.dtype = DType::kF32});
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  const int64_t total = static_cast<int64_t>(expected.generated_ids.size());
  const int64_t n_new = total - static_cast<int64_t>(expected.input_ids.size());

  // Greedy generation: prefill then decode steps, the KV cache on the device.
  const Result<SessionId> session = runtime->open_session(*model, total);
  ASSERT_TRUE(session.ok()) << session.status().to_string();
  const Result<GenerateResult> generated = runtime->generate(*session, expected.input_ids, n_new);
  ASSERT_TRUE(generated.ok()) << generated.status().to_string();
  std::vector<int32_t> ids = expected.input_ids;
  ids.insert(ids.end(), generated->new_tokens.begin(), generated->new_tokens.end());
  EXPECT_EQ(ids, expected.generated_ids);
  ASSERT_TRUE(runtime->close_session(*session).ok());

  // One forward pass over all the tokens, every row's logits.
  const Result<SessionId> fresh = runtime->open_session(*model, total);
  ASSERT_TRUE(fresh.ok()) << fresh.status().to_string();
  const Result<ForwardResult> forward = runtime->forward(*fresh, expected.generated_ids, /*all_logits=*/true);
  ASSERT_TRUE(forward.ok()) << forward.status().to_string();
  ASSERT_EQ(forward->logits.size(), expected.logits.size());
  float max_error = 0.0f;
  for (size_t i = 0; i < forward->logits.size(); ++i) {
    ASSERT_TRUE(std::isfinite(forward->logits[i])) << "logit " << i << " is " << forward->logits[i];
    max_error = std::max(max_error, std::fabs(forward->logits[i] - expected.logits[i]));
  }
  EXPECT_LE(max_error, 1e-3f);
  RecordProperty("max_logit_error", std::to_string(max_error));
  EXPECT_TRUE(runtime->backend().synchronize().ok());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CudaGolden, ::testing::Values("gpt2-tiny", "llama-tiny"));

// Step capture (CUDA graphs) and the narrowed GEMM inputs of 16-bit weights, end to
// end: generation with capture on equals generation with it off, bit for bit, also
// across a longer prefill in the middle that grows the backend's buffers (which drops
// every capture) and across batched decode steps.
class CudaCapture : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    Result<std::unique_ptr<Backend>> cuda = make_backend(DeviceKind::kCuda);
    if (!cuda.ok()) GTEST_SKIP() << "no CUDA backend: " << cuda.status().to_string();
  }
  // A runtime whose executors capture or not (they read DJINN_CUDA_GRAPHS when made).
  static std::unique_ptr<Runtime> runtime(bool capture) {
    if (capture) ::unsetenv("DJINN_CUDA_GRAPHS");
    else ::setenv("DJINN_CUDA_GRAPHS", "0", 1);
    RuntimeOptions options;
    options.device = DeviceKind::kCuda;
    options.device_mem_gb = 1;
    Result<std::unique_ptr<Runtime>> created = Runtime::create(options);
    EXPECT_TRUE(created.ok()) << created.status().to_string();
    return created.ok() ? std::move(created).value() : nullptr;
  }
  struct Trace {
    std::vector<int32_t> tokens;
    std::vector<float> last_logits;
  };
  static Trace run(bool capture, const std::string& model_name) {
    std::unique_ptr<Runtime> rt = runtime(capture);
    Trace trace;
    if (rt == nullptr) return trace;
    const ModelId model = *rt->load_model(model_name, {.dtype = DType::kBF16, .seed = 9});
    const int64_t vocab = (*rt->model(model))->config().vocab_size;
    std::vector<int32_t> prompt;
    for (int i = 0; i < 5; ++i) prompt.push_back(static_cast<int32_t>((i * 37 + 11) % vocab));
    std::vector<SessionId> sessions;
    for (int s = 0; s < 3; ++s) sessions.push_back(*rt->open_session(model, 96));
    Result<GenerateResult> first = rt->generate(sessions[0], prompt, 10);
    EXPECT_TRUE(first.ok()) << first.status().to_string();
    if (!first.ok()) return trace;
    trace.tokens = first->new_tokens;
    // A longer prefill on another session grows the workspaces: captures are dropped.
    std::vector<int32_t> long_prompt;
    for (int i = 0; i < 60; ++i) long_prompt.push_back(static_cast<int32_t>((i * 13 + 5) % vocab));
    Result<GenerateResult> second = rt->generate(sessions[1], long_prompt, 6);
    EXPECT_TRUE(second.ok()) << second.status().to_string();
    if (!second.ok()) return trace;
    trace.tokens.insert(trace.tokens.end(), second->new_tokens.begin(), second->new_tokens.end());
    Result<GenerateResult> more = rt->generate(sessions[0], std::vector<int32_t>{trace.tokens[9]}, 8);
    EXPECT_TRUE(more.ok()) << more.status().to_string();
    if (!more.ok()) return trace;
    trace.tokens.insert(trace.tokens.end(), more->new_tokens.begin(), more->new_tokens.end());
    // Batched decode steps of all three sessions.
    EXPECT_TRUE(rt->forward(sessions[2], prompt).ok());
    std::vector<int32_t> step = {more->new_tokens.back(), second->new_tokens.back(), 7};
    for (int i = 0; i < 5; ++i) {
      Result<std::vector<ForwardResult>> batch = rt->decode_batch(sessions, step);
      EXPECT_TRUE(batch.ok()) << batch.status().to_string();
      if (!batch.ok()) return trace;
      for (size_t b = 0; b < step.size(); ++b) step[b] = (*batch)[b].next_token;
      trace.tokens.insert(trace.tokens.end(), step.begin(), step.end());
      trace.last_logits = (*batch)[2].logits;
    }
    return trace;
  }
  // The same tokens and the same last logits, bit for bit; `want` is not empty.
  static void expect_same_bits(const Trace& got, const Trace& want) {
    ASSERT_FALSE(want.tokens.empty());
    EXPECT_EQ(got.tokens, want.tokens);
    ASSERT_EQ(got.last_logits.size(), want.last_logits.size());
    EXPECT_EQ(std::memcmp(got.last_logits.data(), want.last_logits.data(), want.last_logits.size() * sizeof(float)), 0);
  }
};

TEST_P(CudaCapture, CapturedStepsEqualUncapturedBitForBit) {
  const Trace off = run(false, GetParam());
  const Trace on = run(true, GetParam());
  ::unsetenv("DJINN_CUDA_GRAPHS");
  expect_same_bits(on, off);
}

// Programmatic dependent launch (every kernel may be scheduled before the one before
// it ends, and waits for it on the device) changes when kernels start, never what they
// compute: a run with it off equals one with it on, bit for bit. A kernel that touched
// memory before its wait would show here.
TEST_P(CudaCapture, EarlyLaunchesEqualPlainLaunchesBitForBit) {
  ::setenv("DJINN_CUDA_PDL", "0", 1);
  const Trace plain = run(true, GetParam());
  ::unsetenv("DJINN_CUDA_PDL");
  const Trace early = run(true, GetParam());
  ::unsetenv("DJINN_CUDA_GRAPHS");
  expect_same_bits(early, plain);
}

INSTANTIATE_TEST_SUITE_P(Presets, CudaCapture, ::testing::Values("llama-tiny", "gpt2-tiny"));

// Swaps on the CUDA streams: a step issued right after a swap-in is ordered after the
// copy on the device (no host wait) and generates what a session never swapped does;
// so do batched steps with a session swapped out and in between them.
TEST(CudaSwap, StepsOrderedAfterASwapInOnTheDeviceGenerateAsWithoutSwaps) {
  Result<std::unique_ptr<Backend>> probe = make_backend(DeviceKind::kCuda);
  if (!probe.ok()) GTEST_SKIP() << "no CUDA backend: " << probe.status().to_string();
  RuntimeOptions options;
  options.device = DeviceKind::kCuda;
  options.device_mem_gb = 1;
  options.host_pool_gb = 0.25;
  std::unique_ptr<Runtime> rt = *Runtime::create(options);
  const ModelId model = *rt->load_model("llama-tiny", {.dtype = DType::kBF16, .seed = 4});
  const int64_t vocab = (*rt->model(model))->config().vocab_size;
  std::vector<int32_t> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back(static_cast<int32_t>((i * 29 + 3) % vocab));
  const SessionId kept = *rt->open_session(model, 96), moved = *rt->open_session(model, 96);
  const int32_t first = rt->forward(kept, prompt)->next_token;
  ASSERT_EQ(rt->forward(moved, prompt)->next_token, first);
  std::vector<int32_t> want, got;
  int32_t a = first, b = first;
  for (int round = 0; round < 6; ++round) {
    ASSERT_TRUE(rt->swap_out(moved).ok());
    const Status settled = rt->settle(moved);
    ASSERT_TRUE(settled.ok()) << settled.to_string();
    ASSERT_EQ((*rt->session(moved))->residency(), Residency::kSwapped);
    ASSERT_TRUE(rt->swap_in(moved, SwapUse::kStepFollows).ok());  // the step below waits on the device
    Result<ForwardResult> rb = rt->forward(moved, std::vector<int32_t>{b});
    ASSERT_TRUE(rb.ok()) << rb.status().to_string();
    EXPECT_EQ((*rt->session(moved))->residency(), Residency::kResident);
    a = rt->forward(kept, std::vector<int32_t>{a})->next_token;
    b = rb->next_token;
    want.push_back(a);
    got.push_back(b);
    // A batched step with the moved session swapped out and in just before it.
    ASSERT_TRUE(rt->swap_out(moved).ok());
    const Status settled_again = rt->settle(moved);
    ASSERT_TRUE(settled_again.ok()) << settled_again.to_string();
    const SessionId both[] = {kept, moved};
    const int32_t tokens[] = {a, b};
    Result<std::vector<ForwardResult>> step = rt->decode_batch(both, tokens);  // swaps `moved` in
    ASSERT_TRUE(step.ok()) << step.status().to_string();
    EXPECT_EQ((*step)[0].next_token, (*step)[1].next_token);
    a = (*step)[0].next_token;
    b = (*step)[1].next_token;
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(rt->swap_manager().stats().swaps_in, 12u);
  EXPECT_GT(rt->swap_manager().stats().seconds_in, 0.0);  // timed by the device's events
}

}  // namespace
}  // namespace djinn
