// Tests of the CPU reference kernels (djinn::cpu) against naive references written
// here: plain loops, double accumulation, nothing clever. Inputs are random with
// fixed seeds over deliberately awkward sizes (1, 3, 7, 17, 79, ...).
//
// Weights and caches stored as f16 / bf16 are compared against a reference that uses
// the rounded values widened back to f32, so the f32 tolerances still apply; a looser
// comparison against the unrounded values checks the rounding itself is sane.

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "djinn/backend/cpu/compute_pool.h"
#include "djinn/backend/cpu/cpu_backend.h"
#include "djinn/backend/cpu/cpu_kernels.h"
#include "djinn/backend/cpu/skinny_gemm.h"
#include "djinn/backend/cpu/vector_kernels.h"
#include "djinn/core/dtype.h"
#include "djinn/core/status.h"
#include "djinn/core/tensor.h"
#include "djinn/graph/op.h"

using djinn::CpuBackend;
using djinn::DType;
using djinn::OpKind;
using djinn::OpAttrs;
using djinn::Shape;
using djinn::Status;
using djinn::StatusCode;
using djinn::TensorView;
namespace cpu = djinn::cpu;

namespace {

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

constexpr double kRtol = 1e-5;  // f32 compute, relative part
constexpr double kAtol = 1e-5;  // f32 compute, absolute part (values are O(1))

std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<int32_t> random_ints(size_t n, uint32_t seed, int32_t lo, int32_t hi) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(lo, hi);
  std::vector<int32_t> v(n);
  for (int32_t& x : v) x = dist(rng);
  return v;
}

size_t sz(int64_t n) { return static_cast<size_t>(n); }

TensorView f32_view(std::vector<float>& v, Shape shape) {
  return TensorView::contiguous(v.data(), std::move(shape), DType::kF32);
}
TensorView i32_view(std::vector<int32_t>& v, Shape shape) {
  return TensorView::contiguous(v.data(), std::move(shape), DType::kI32);
}

// Values held in f32, f16 or bf16 storage: the storage itself, and what it holds
// widened back to f32 (which is what a reference must use).
struct Stored {
  DType dtype = DType::kF32;
  std::vector<float> f32;       // storage when dtype == kF32
  std::vector<uint16_t> bits;   // storage when dtype is f16 / bf16
  std::vector<float> values;    // the stored values as f32

  void* data() { return dtype == DType::kF32 ? static_cast<void*>(f32.data()) : static_cast<void*>(bits.data()); }
  TensorView view(Shape shape) { return TensorView::contiguous(data(), std::move(shape), dtype); }
};

Stored store(const std::vector<float>& v, DType dtype) {
  Stored s;
  s.dtype = dtype;
  if (dtype == DType::kF32) {
    s.f32 = v;
    s.values = v;
    return s;
  }
  s.bits.resize(v.size());
  s.values.resize(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    s.bits[i] = dtype == DType::kF16 ? djinn::float_to_half(v[i]) : djinn::float_to_bf16(v[i]);
    s.values[i] = dtype == DType::kF16 ? djinn::half_to_float(s.bits[i]) : djinn::bf16_to_float(s.bits[i]);
  }
  return s;
}

std::string dtype_str(DType d) { return std::string(djinn::dtype_name(d)); }

// |got - want| <= atol + rtol * |want| elementwise; reports the first few misses.
::testing::AssertionResult all_close(const std::vector<float>& got, const std::vector<double>& want,
                                     double rtol = kRtol, double atol = kAtol) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  int misses = 0;
  auto failure = ::testing::AssertionFailure();
  for (size_t i = 0; i < got.size(); ++i) {
    const double diff = std::abs(static_cast<double>(got[i]) - want[i]);
    if (!(diff <= atol + rtol * std::abs(want[i]))) {  // also catches NaN
      if (misses < 5) failure << "\n  [" << i << "] got " << got[i] << " want " << want[i] << " (diff " << diff << ")";
      ++misses;
    }
  }
  if (misses == 0) return ::testing::AssertionSuccess();
  return failure << "\n  " << misses << " of " << got.size() << " elements differ";
}

::testing::AssertionResult all_finite(const std::vector<float>& v) {
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i])) return ::testing::AssertionFailure() << "element " << i << " is " << v[i];
  return ::testing::AssertionSuccess();
}

const std::vector<int64_t> kAwkward = {1, 3, 7, 17, 79};

// ---------------------------------------------------------------------------------
// Naive references
// ---------------------------------------------------------------------------------

// out[m, n] = x[m, k] . w, with w [n, k] if transpose_b else [k, n].
std::vector<double> ref_matmul(const std::vector<float>& x, const std::vector<float>& w, int64_t m, int64_t k,
                               int64_t n, bool transpose_b) {
  std::vector<double> out(sz(m * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (int64_t p = 0; p < k; ++p) {
        const float wv = transpose_b ? w[sz(j * k + p)] : w[sz(p * n + j)];
        acc += static_cast<double>(x[sz(i * k + p)]) * wv;
      }
      out[sz(i * n + j)] = acc;
    }
  return out;
}

std::vector<double> ref_layernorm(const std::vector<float>& x, const std::vector<float>& g,
                                  const std::vector<float>& b, int64_t rows, int64_t h, double eps) {
  std::vector<double> out(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < h; ++i) mean += x[sz(r * h + i)];
    mean /= static_cast<double>(h);
    for (int64_t i = 0; i < h; ++i) var += (x[sz(r * h + i)] - mean) * (x[sz(r * h + i)] - mean);
    var /= static_cast<double>(h);
    for (int64_t i = 0; i < h; ++i)
      out[sz(r * h + i)] = (x[sz(r * h + i)] - mean) / std::sqrt(var + eps) * g[sz(i)] + b[sz(i)];
  }
  return out;
}

std::vector<double> ref_rmsnorm(const std::vector<float>& x, const std::vector<float>& g, int64_t rows, int64_t h,
                                double eps) {
  std::vector<double> out(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0.0;
    for (int64_t i = 0; i < h; ++i) ms += static_cast<double>(x[sz(r * h + i)]) * x[sz(r * h + i)];
    ms /= static_cast<double>(h);
    for (int64_t i = 0; i < h; ++i) out[sz(r * h + i)] = g[sz(i)] * (x[sz(r * h + i)] / std::sqrt(ms + eps));
  }
  return out;
}

double ref_gelu_new(double v) {
  const double pi = 3.14159265358979323846;
  return 0.5 * v * (1.0 + std::tanh(std::sqrt(2.0 / pi) * (v + 0.044715 * v * v * v)));
}

double ref_silu(double v) { return v / (1.0 + std::exp(-v)); }

std::vector<double> ref_softmax(const std::vector<float>& x, int64_t rows, int64_t cols) {
  std::vector<double> out(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    double mx = -std::numeric_limits<double>::infinity();
    for (int64_t c = 0; c < cols; ++c) mx = std::max(mx, static_cast<double>(x[sz(r * cols + c)]));
    double sum = 0.0;
    for (int64_t c = 0; c < cols; ++c) sum += std::exp(x[sz(r * cols + c)] - mx);
    for (int64_t c = 0; c < cols; ++c) out[sz(r * cols + c)] = std::exp(x[sz(r * cols + c)] - mx) / sum;
  }
  return out;
}

// Rotate-half RoPE (Hugging Face Llama): per head, element i pairs with i + half;
// inv_freq[i] = theta^(-2i/head_dim), angle = pos * inv_freq[i].
std::vector<double> ref_rope(const std::vector<float>& x, const std::vector<int32_t>& pos, int64_t rows,
                             int64_t width, int64_t head_dim, double theta) {
  std::vector<double> out(x.size());
  const int64_t half = head_dim / 2;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < width / head_dim; ++h)
      for (int64_t i = 0; i < half; ++i) {
        const double inv_freq = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
        const double angle = pos[sz(r)] * inv_freq;
        const size_t a = sz(r * width + h * head_dim + i), b = a + sz(half);
        out[a] = x[a] * std::cos(angle) - x[b] * std::sin(angle);
        out[b] = x[b] * std::cos(angle) + x[a] * std::sin(angle);
      }
  return out;
}

// Causal attention: query row i (position past+i), head h, sees cache rows
// [0, past+i] of kv head h / (n_heads / n_kv_heads).
std::vector<double> ref_attention(const std::vector<float>& q, const std::vector<float>& k,
                                  const std::vector<float>& v, int64_t seq, int64_t past, int64_t n_heads,
                                  int64_t n_kv_heads, int64_t head_dim, double scale) {
  const int64_t q_width = n_heads * head_dim, kv_width = n_kv_heads * head_dim;
  std::vector<double> out(sz(seq * q_width), 0.0);
  for (int64_t i = 0; i < seq; ++i)
    for (int64_t h = 0; h < n_heads; ++h) {
      const int64_t kvh = h / (n_heads / n_kv_heads);
      const int64_t visible = past + i + 1;
      std::vector<double> s(sz(visible));
      for (int64_t t = 0; t < visible; ++t) {
        double dot = 0.0;
        for (int64_t d = 0; d < head_dim; ++d)
          dot += static_cast<double>(q[sz(i * q_width + h * head_dim + d)]) * k[sz(t * kv_width + kvh * head_dim + d)];
        s[sz(t)] = dot * scale;
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0.0;
      for (double& e : s) sum += (e = std::exp(e - mx));
      for (int64_t t = 0; t < visible; ++t)
        for (int64_t d = 0; d < head_dim; ++d)
          out[sz(i * q_width + h * head_dim + d)] += s[sz(t)] / sum * v[sz(t * kv_width + kvh * head_dim + d)];
    }
  return out;
}

// ---------------------------------------------------------------------------------
// matmul
// ---------------------------------------------------------------------------------

void check_matmul(int64_t m, int64_t k, int64_t n, bool transpose_b, DType w_dtype, uint32_t seed) {
  SCOPED_TRACE(::testing::Message() << "m=" << m << " k=" << k << " n=" << n << " transpose_b=" << transpose_b
                                    << " w=" << dtype_str(w_dtype));
  auto x = random_floats(sz(m * k), seed);
  const auto w_raw = random_floats(sz(k * n), seed + 1);
  Stored w = store(w_raw, w_dtype);
  std::vector<float> out(sz(m * n), std::numeric_limits<float>::quiet_NaN());
  const Shape w_shape = transpose_b ? Shape{n, k} : Shape{k, n};
  ASSERT_TRUE(cpu::matmul(f32_view(x, {m, k}), w.view(w_shape), transpose_b, f32_view(out, {m, n})).ok());
  EXPECT_TRUE(all_close(out, ref_matmul(x, w.values, m, k, n, transpose_b)));
  if (w_dtype != DType::kF32) {  // and the rounding itself is sane: close to the unrounded product
    const double loose = w_dtype == DType::kF16 ? 2e-3 : 2e-2;
    EXPECT_TRUE(all_close(out, ref_matmul(x, w_raw, m, k, n, transpose_b), loose, loose * std::sqrt(double(k))));
  }
}

TEST(CpuMatmul, TransposedWeightsMatchReference) {
  uint32_t seed = 100;
  for (int64_t m : {2, 3, 17})
    for (int64_t k : kAwkward)
      for (int64_t n : kAwkward) check_matmul(m, k, n, /*transpose_b=*/true, DType::kF32, seed++);
}

TEST(CpuMatmul, UntransposedWeightsMatchReference) {
  uint32_t seed = 200;
  for (int64_t m : {2, 3, 17})
    for (int64_t k : kAwkward)
      for (int64_t n : kAwkward) check_matmul(m, k, n, /*transpose_b=*/false, DType::kF32, seed++);
}

TEST(CpuMatmul, SingleRowGemvPathMatchesReferenceBothLayouts) {
  uint32_t seed = 300;
  for (bool transpose_b : {true, false})
    for (int64_t k : kAwkward)
      for (int64_t n : kAwkward) check_matmul(1, k, n, transpose_b, DType::kF32, seed++);
}

TEST(CpuMatmul, LargerSquareAndRectangularShapes) {
  uint32_t seed = 400;
  for (bool transpose_b : {true, false}) {
    check_matmul(79, 79, 79, transpose_b, DType::kF32, seed++);
    check_matmul(33, 257, 65, transpose_b, DType::kF32, seed++);
    check_matmul(1, 257, 129, transpose_b, DType::kF32, seed++);
  }
}

// Shapes wide enough to be split over the compute pool, k past several of the skinny
// kernels' row blocks, and every row count on either side of their tiles (8) and of
// their limit (16, above which OpenBLAS runs in column slices).
TEST(CpuMatmul, SkinnyKernelsAndColumnSlicesMatchReference) {
  uint32_t seed = 450;
  for (bool transpose_b : {true, false})
    for (int64_t m : {1, 2, 7, 8, 9, 15, 16, 17})
      for (auto [k, n] : {std::pair<int64_t, int64_t>{33, 300}, {300, 129}, {16, 1000}, {1, 257}})
        check_matmul(m, k, n, transpose_b, DType::kF32, seed++);
}

TEST(CpuMatmul, SkinnyKernelsDeclineShapesTheyDoNotHandle) {
  std::vector<float> x(17 * 8, 1.0f), w(8 * 8, 1.0f), out(17 * 8, -1.0f);
  EXPECT_FALSE(cpu::skinny_matmul(x.data(), 1, 8, w.data(), 8, false, out.data()));
  EXPECT_FALSE(cpu::skinny_matmul(x.data(), 17, 8, w.data(), 8, false, out.data()));
  EXPECT_FALSE(cpu::skinny_matmul(x.data(), 4, 0, w.data(), 8, true, out.data()));
  EXPECT_EQ(out[0], -1.0f);  // declining writes nothing
  EXPECT_EQ(cpu::skinny_matmul(x.data(), 4, 8, w.data(), 8, true, out.data()), cpu::skinny_gemm_available());
  if (cpu::skinny_gemm_available()) {
    EXPECT_EQ(out[0], 8.0f);
  }
}

TEST(CpuVectorKernels, DotsAndWeightedRowsMatchReference) {
  uint32_t seed = 470;
  for (int64_t dim : {1, 15, 16, 17, 64, 100})
    for (int64_t rows : {1, 3, 33}) {
      SCOPED_TRACE(::testing::Message() << "dim=" << dim << " rows=" << rows);
      const int64_t ld = dim + 5;  // strided rows, as one head inside a KV cache
      const auto q = random_floats(sz(dim), seed++);
      const auto table = random_floats(sz(rows * ld), seed++);
      const auto weights = random_floats(sz(rows), seed++);
      std::vector<float> scores(sz(rows)), out(sz(dim), std::numeric_limits<float>::quiet_NaN());
      cpu::scaled_dots(q.data(), table.data(), ld, rows, dim, 0.5f, scores.data());
      cpu::weighted_rows(weights.data(), table.data(), ld, rows, dim, out.data());
      std::vector<double> want_scores(sz(rows)), want_out(sz(dim), 0.0);
      for (int64_t t = 0; t < rows; ++t) {
        double dot = 0;
        for (int64_t d = 0; d < dim; ++d) dot += double(q[sz(d)]) * table[sz(t * ld + d)];
        want_scores[sz(t)] = 0.5 * dot;
        for (int64_t d = 0; d < dim; ++d) want_out[sz(d)] += double(weights[sz(t)]) * table[sz(t * ld + d)];
      }
      EXPECT_TRUE(all_close(scores, want_scores));
      EXPECT_TRUE(all_close(out, want_out));
    }
}

TEST(CpuVectorKernels, ArgmaxIsStdMaxElementIncludingTiesInfinitiesAndNaNs) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::vector<std::vector<float>> rows;
  for (int64_t n : {1, 15, 16, 17, 50257}) rows.push_back(random_floats(sz(n), 480 + static_cast<uint32_t>(n)));
  std::vector<float> ties(40, 1.0f);
  ties[7] = ties[30] = 2.0f;
  rows.push_back(ties);
  std::vector<float> nan_first(40, 1.0f), nan_inside(40, 1.0f), all_nan(40, nan), all_minus_inf(40, -inf);
  nan_first[0] = nan;
  nan_first[20] = 5.0f;
  nan_inside[3] = nan;
  nan_inside[25] = 5.0f;
  rows.insert(rows.end(), {nan_first, nan_inside, all_nan, all_minus_inf});
  for (const std::vector<float>& row : rows) {
    SCOPED_TRACE(::testing::Message() << "n=" << row.size());
    EXPECT_EQ(cpu::argmax_f32(row.data(), static_cast<int64_t>(row.size())),
              std::max_element(row.begin(), row.end()) - row.begin());
  }
}

TEST(CpuComputePool, RangesCoverEveryItemOnceAtGrainBoundaries) {
  cpu::ComputePool& pool = cpu::ComputePool::instance();
  for (int64_t n : {1, 5, 63, 64, 65, 1000, 4097})
    for (int64_t grain : {1, 8, 32}) {
      std::vector<std::atomic<int>> hits(sz(n));
      pool.for_ranges(n, grain, [&](int64_t begin, int64_t end) {
        EXPECT_LT(begin, end);
        EXPECT_TRUE(begin % grain == 0) << begin;
        for (int64_t i = begin; i < end; ++i) ++hits[sz(i)];
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[sz(i)].load(), 1) << "n=" << n << " grain=" << grain << " i=" << i;
    }
}

TEST(CpuComputePool, NestedRunsRunInlineAndExceptionsReachTheCallerAfterEveryPart) {
  cpu::ComputePool& pool = cpu::ComputePool::instance();
  std::atomic<int> inner_parts{0}, outer_parts{0};
  pool.run([&](int) {
    ++outer_parts;
    pool.run([&](int) { ++inner_parts; });  // would deadlock if it went to the busy pool
  });
  EXPECT_EQ(outer_parts.load(), pool.size());
  EXPECT_EQ(inner_parts.load(), pool.size() * pool.size());
  std::atomic<int> finished{0};
  EXPECT_THROW(pool.run([&](int part) {
    if (part == pool.size() - 1) throw std::runtime_error("part failed");
    ++finished;
  }),
               std::runtime_error);
  EXPECT_EQ(finished.load(), pool.size() - 1);  // the others ran to the end
  std::atomic<int> after{0};
  pool.run([&](int) { ++after; });  // and the pool still works
  EXPECT_EQ(after.load(), pool.size());
}

// warm_gemm_buffers touches every compute thread's OpenBLAS packing buffers: the GEMMs of
// a gpt2-sized prefill (128 tokens, widths 768 / 2304 / 3072) then find them mapped. A
// fresh test process, so nothing else has warmed them; the operands are touched first.
TEST(CpuComputePool, WarmedGemmBuffersLeaveAPrefillsGemmsNothingToFault) {
  cpu::ComputePool::instance().warm_gemm_buffers();
  auto minor_faults = [] {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_minflt;
  };
  for (auto [k, n] : {std::pair<int64_t, int64_t>{768, 2304}, {3072, 768}, {768, 3072}}) {
    std::vector<float> x = random_floats(sz(128 * k), 1), w = random_floats(sz(k * n), 2), out(sz(128 * n), 1.0f);
    const long before = minor_faults();
    ASSERT_TRUE(cpu::matmul(f32_view(x, {128, k}), f32_view(w, {k, n}), /*transpose_b=*/false, f32_view(out, {128, n})).ok());
    EXPECT_LE(minor_faults() - before, 8) << "128 x " << k << " x " << n;
  }
}

TEST(CpuMatmul, F16WeightsMatchReferenceOnRoundedWeights) {
  uint32_t seed = 500;
  for (bool transpose_b : {true, false})
    for (int64_t m : {1, 3, 17})
      for (int64_t k : {1, 7, 79})
        for (int64_t n : {1, 17, 79}) check_matmul(m, k, n, transpose_b, DType::kF16, seed++);
}

TEST(CpuMatmul, Bf16WeightsMatchReferenceOnRoundedWeights) {
  uint32_t seed = 600;
  for (bool transpose_b : {true, false})
    for (int64_t m : {1, 3, 17})
      for (int64_t k : {1, 7, 79})
        for (int64_t n : {1, 17, 79}) check_matmul(m, k, n, transpose_b, DType::kBF16, seed++);
}

TEST(CpuMatmul, ZeroRowsIsANoOp) {
  std::vector<float> x, w = random_floats(7 * 3, 1), out;
  EXPECT_TRUE(cpu::matmul(f32_view(x, {0, 7}), f32_view(w, {3, 7}), true, f32_view(out, {0, 3})).ok());
}

// ---------------------------------------------------------------------------------
// embedding
// ---------------------------------------------------------------------------------

TEST(CpuEmbedding, GathersTheRowsOfEachIdForEveryStorageDtype) {
  uint32_t seed = 700;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t vocab : {1, 17, 79})
      for (int64_t hidden : {1, 7, 79})
        for (int64_t rows : {1, 3, 17}) {
          SCOPED_TRACE(::testing::Message() << dtype_str(dtype) << " vocab=" << vocab << " hidden=" << hidden
                                            << " rows=" << rows);
          Stored table = store(random_floats(sz(vocab * hidden), seed++), dtype);
          auto ids = random_ints(sz(rows), seed++, 0, static_cast<int32_t>(vocab - 1));
          ids.front() = static_cast<int32_t>(vocab - 1);  // both ends of the table
          ids.back() = 0;
          std::vector<float> out(sz(rows * hidden), std::numeric_limits<float>::quiet_NaN());
          ASSERT_TRUE(cpu::embedding(table.view({vocab, hidden}), i32_view(ids, {rows}), f32_view(out, {rows, hidden}))
                          .ok());
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < hidden; ++c)
              ASSERT_EQ(out[sz(r * hidden + c)], table.values[sz(ids[sz(r)] * hidden + c)]) << "row " << r << " col " << c;
        }
}

void expect_bad_id(int32_t bad_id, int64_t vocab) {
  SCOPED_TRACE(::testing::Message() << "id=" << bad_id << " vocab=" << vocab);
  const int64_t hidden = 7;
  auto table = random_floats(sz(vocab * hidden), 1);
  std::vector<int32_t> ids = {0, static_cast<int32_t>(vocab - 1), bad_id, 1};
  std::vector<float> out(ids.size() * hidden);
  const Status s = cpu::embedding(f32_view(table, {vocab, hidden}), i32_view(ids, {4}), f32_view(out, {4, hidden}));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  EXPECT_NE(s.message().find(std::to_string(bad_id)), std::string::npos) << s.message();
}

TEST(CpuEmbedding, OutOfVocabularyIdIsOutOfRangeNamingTheId) {
  expect_bad_id(1234, 17);
  expect_bad_id(17, 17);  // one past the end
  expect_bad_id(std::numeric_limits<int32_t>::max(), 17);
}

TEST(CpuEmbedding, NegativeIdIsOutOfRangeNamingTheId) {
  expect_bad_id(-1, 17);
  expect_bad_id(-98765, 17);
  expect_bad_id(std::numeric_limits<int32_t>::min(), 17);
}

// ---------------------------------------------------------------------------------
// add, mul
// ---------------------------------------------------------------------------------

TEST(CpuAdd, SameShapeMatchesReference) {
  uint32_t seed = 800;
  for (int64_t rows : kAwkward)
    for (int64_t cols : kAwkward) {
      auto a = random_floats(sz(rows * cols), seed++), b = random_floats(sz(rows * cols), seed++);
      std::vector<float> out(a.size());
      ASSERT_TRUE(cpu::add(f32_view(a, {rows, cols}), f32_view(b, {rows, cols}), f32_view(out, {rows, cols})).ok());
      std::vector<double> want(a.size());
      for (size_t i = 0; i < a.size(); ++i) want[i] = static_cast<double>(a[i]) + b[i];
      EXPECT_TRUE(all_close(out, want, 1e-7, 1e-7)) << rows << "x" << cols;
    }
}

TEST(CpuAdd, RowBroadcastBiasMatchesReference) {
  uint32_t seed = 900;
  for (DType bias_dtype : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t rows : kAwkward)
      for (int64_t cols : kAwkward) {
        SCOPED_TRACE(::testing::Message() << dtype_str(bias_dtype) << " " << rows << "x" << cols);
        auto a = random_floats(sz(rows * cols), seed++);
        Stored bias = store(random_floats(sz(cols), seed++), bias_dtype);
        std::vector<float> out(a.size());
        ASSERT_TRUE(cpu::add(f32_view(a, {rows, cols}), bias.view({cols}), f32_view(out, {rows, cols})).ok());
        std::vector<double> want(a.size());
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c)
            want[sz(r * cols + c)] = static_cast<double>(a[sz(r * cols + c)]) + bias.values[sz(c)];
        EXPECT_TRUE(all_close(out, want, 1e-7, 1e-7));
      }
}

TEST(CpuMul, SameShapeMatchesReference) {
  uint32_t seed = 1000;
  for (int64_t rows : kAwkward)
    for (int64_t cols : kAwkward) {
      auto a = random_floats(sz(rows * cols), seed++, -3, 3), b = random_floats(sz(rows * cols), seed++, -3, 3);
      std::vector<float> out(a.size());
      ASSERT_TRUE(cpu::mul(f32_view(a, {rows, cols}), f32_view(b, {rows, cols}), f32_view(out, {rows, cols})).ok());
      std::vector<double> want(a.size());
      for (size_t i = 0; i < a.size(); ++i) want[i] = static_cast<double>(a[i]) * b[i];
      EXPECT_TRUE(all_close(out, want, 1e-7, 1e-7)) << rows << "x" << cols;
    }
}

// ---------------------------------------------------------------------------------
// layernorm, rmsnorm
// ---------------------------------------------------------------------------------

TEST(CpuLayerNorm, MatchesReference) {
  uint32_t seed = 1100;
  for (int64_t rows : {1, 3, 17})
    for (int64_t h : {1, 3, 7, 79, 768}) {
      SCOPED_TRACE(::testing::Message() << rows << "x" << h);
      auto x = random_floats(sz(rows * h), seed++, -2, 2);
      for (size_t i = 0; i < x.size(); i += 2) x[i] += 0.5f;  // a non-zero mean
      auto g = random_floats(sz(h), seed++, 0.5f, 1.5f), b = random_floats(sz(h), seed++);
      std::vector<float> out(x.size());
      ASSERT_TRUE(cpu::layernorm(f32_view(x, {rows, h}), f32_view(g, {h}), f32_view(b, {h}), 1e-5f,
                                 f32_view(out, {rows, h}))
                      .ok());
      EXPECT_TRUE(all_close(out, ref_layernorm(x, g, b, rows, h, 1e-5), 2e-5, 2e-5));
    }
}

TEST(CpuLayerNorm, F16GammaBetaMatchReferenceOnRoundedValues) {
  const int64_t rows = 3, h = 79;
  auto x = random_floats(sz(rows * h), 1150, -2, 2);
  Stored g = store(random_floats(sz(h), 1151, 0.5f, 1.5f), DType::kF16);
  Stored b = store(random_floats(sz(h), 1152), DType::kF16);
  std::vector<float> out(x.size());
  ASSERT_TRUE(cpu::layernorm(f32_view(x, {rows, h}), g.view({h}), b.view({h}), 1e-5f, f32_view(out, {rows, h})).ok());
  EXPECT_TRUE(all_close(out, ref_layernorm(x, g.values, b.values, rows, h, 1e-5), 2e-5, 2e-5));
}

TEST(CpuRmsNorm, MatchesReference) {
  uint32_t seed = 1200;
  for (int64_t rows : {1, 3, 17})
    for (int64_t h : {1, 3, 7, 79, 768}) {
      SCOPED_TRACE(::testing::Message() << rows << "x" << h);
      auto x = random_floats(sz(rows * h), seed++, -2, 2);
      auto g = random_floats(sz(h), seed++, -1.5f, 1.5f);
      std::vector<float> out(x.size());
      ASSERT_TRUE(cpu::rmsnorm(f32_view(x, {rows, h}), f32_view(g, {h}), 1e-6f, f32_view(out, {rows, h})).ok());
      EXPECT_TRUE(all_close(out, ref_rmsnorm(x, g, rows, h, 1e-6), 2e-5, 2e-5));
    }
}

TEST(CpuRmsNorm, Bf16GammaMatchesReferenceOnRoundedValues) {
  const int64_t rows = 7, h = 17;
  auto x = random_floats(sz(rows * h), 1250, -2, 2);
  Stored g = store(random_floats(sz(h), 1251, -1.5f, 1.5f), DType::kBF16);
  std::vector<float> out(x.size());
  ASSERT_TRUE(cpu::rmsnorm(f32_view(x, {rows, h}), g.view({h}), 1e-6f, f32_view(out, {rows, h})).ok());
  EXPECT_TRUE(all_close(out, ref_rmsnorm(x, g.values, rows, h, 1e-6), 2e-5, 2e-5));
}

// ---------------------------------------------------------------------------------
// gelu_new, silu
// ---------------------------------------------------------------------------------

TEST(CpuGeluNew, MatchesTanhFormula) {
  uint32_t seed = 1300;
  for (int64_t rows : {1, 3, 17})
    for (int64_t cols : {1, 7, 79}) {
      auto x = random_floats(sz(rows * cols), seed++, -8, 8);
      x[0] = 0.0f;
      std::vector<float> out(x.size());
      ASSERT_TRUE(cpu::gelu_new(f32_view(x, {rows, cols}), f32_view(out, {rows, cols})).ok());
      std::vector<double> want(x.size());
      for (size_t i = 0; i < x.size(); ++i) want[i] = ref_gelu_new(x[i]);
      EXPECT_TRUE(all_close(out, want, 1e-5, 1e-6)) << rows << "x" << cols;
    }
}

TEST(CpuGeluNew, KnownValuesAndExtremes) {
  std::vector<float> x = {0.0f, 1.0f, -1.0f, 3.0f, 30.0f, -30.0f, 1e10f, -1e10f, 1e30f, -1e30f};
  std::vector<float> out(x.size());
  const int64_t n = static_cast<int64_t>(x.size());
  ASSERT_TRUE(cpu::gelu_new(f32_view(x, {1, n}), f32_view(out, {1, n})).ok());
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_NEAR(out[1], 0.841192, 1e-5);  // gelu_new(1), the tanh approximation
  EXPECT_NEAR(out[2], -0.158808, 1e-5);
  EXPECT_NEAR(out[3], 2.996363, 1e-5);
  EXPECT_FLOAT_EQ(out[4], 30.0f);
  EXPECT_EQ(out[5], 0.0f);
  EXPECT_FLOAT_EQ(out[6], 1e10f);
  EXPECT_EQ(out[7], 0.0f);
  EXPECT_FLOAT_EQ(out[8], 1e30f);
  EXPECT_EQ(out[9], 0.0f);
}

TEST(CpuSilu, MatchesReference) {
  uint32_t seed = 1400;
  for (int64_t rows : {1, 3, 17})
    for (int64_t cols : {1, 7, 79}) {
      auto x = random_floats(sz(rows * cols), seed++, -20, 20);
      std::vector<float> out(x.size());
      ASSERT_TRUE(cpu::silu(f32_view(x, {rows, cols}), f32_view(out, {rows, cols})).ok());
      std::vector<double> want(x.size());
      for (size_t i = 0; i < x.size(); ++i) want[i] = ref_silu(x[i]);
      EXPECT_TRUE(all_close(out, want, 1e-5, 1e-7)) << rows << "x" << cols;
    }
}

TEST(CpuSilu, ExtremesStayFinite) {
  std::vector<float> x = {0.0f, -100.0f, 100.0f, -1000.0f, 1000.0f, -3e38f, 3e38f};
  std::vector<float> out(x.size());
  const int64_t n = static_cast<int64_t>(x.size());
  ASSERT_TRUE(cpu::silu(f32_view(x, {n}), f32_view(out, {n})).ok());
  EXPECT_TRUE(all_finite(out));
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_NEAR(out[1], 0.0f, 1e-30);
  EXPECT_FLOAT_EQ(out[2], 100.0f);
  EXPECT_EQ(out[3], 0.0f);
  EXPECT_FLOAT_EQ(out[4], 1000.0f);
}

// silu_mul (a SwiGLU MLP's gate times up) is silu then mul in one pass: bit for bit.
TEST(CpuSiluMul, EqualsSiluThenMulBitForBit) {
  uint32_t seed = 1450;
  for (int64_t rows : {1, 3, 17})
    for (int64_t cols : {1, 7, 79, 1000}) {
      auto a = random_floats(sz(rows * cols), seed++, -20, 20);
      auto b = random_floats(sz(rows * cols), seed++, -4, 4);
      std::vector<float> fused(a.size()), gate(a.size()), want(a.size());
      ASSERT_TRUE(cpu::silu_mul(f32_view(a, {rows, cols}), f32_view(b, {rows, cols}), f32_view(fused, {rows, cols})).ok());
      ASSERT_TRUE(cpu::silu(f32_view(a, {rows, cols}), f32_view(gate, {rows, cols})).ok());
      ASSERT_TRUE(cpu::mul(f32_view(gate, {rows, cols}), f32_view(b, {rows, cols}), f32_view(want, {rows, cols})).ok());
      EXPECT_EQ(std::memcmp(fused.data(), want.data(), want.size() * sizeof(float)), 0) << rows << "x" << cols;
    }
}

// matmul_add through the backend: the product, then the residual added in place, equal
// bit for bit to matmul then add (the order the Llama graph used before the fusion).
TEST(CpuMatMulAdd, EqualsMatMulThenAddBitForBit) {
  CpuBackend cpu;
  uint32_t seed = 1470;
  for (int64_t m : {1, 4, 17}) {
    const int64_t k = 79, n = 33;
    auto x = random_floats(sz(m * k), seed++, -1, 1);
    auto w = random_floats(sz(n * k), seed++, -1, 1);
    auto residual = random_floats(sz(m * n), seed++, -3, 3);
    std::vector<float> product(sz(m * n)), want(sz(m * n)), got(sz(m * n));
    const TensorView xv = f32_view(x, {m, k}), wv = f32_view(w, {n, k}), rv = f32_view(residual, {m, n});
    ASSERT_TRUE(cpu::matmul(xv, wv, /*transpose_b=*/true, f32_view(product, {m, n})).ok());
    ASSERT_TRUE(cpu::add(rv, f32_view(product, {m, n}), f32_view(want, {m, n})).ok());
    const TensorView* inputs[] = {&xv, &wv, &rv};
    ASSERT_TRUE(cpu.run_op(OpKind::kMatMulAdd, OpAttrs{.transpose_b = true}, inputs, f32_view(got, {m, n}), {}).ok());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0) << "m=" << m;
  }
}

// ---------------------------------------------------------------------------------
// softmax
// ---------------------------------------------------------------------------------

TEST(CpuSoftmax, VocabularyWideRowsStayWithinF32Rounding) {
  // A 50257-wide row (GPT-2's vocabulary): a running f32 sum drifted ~5e-5 relative.
  const int64_t cols = 50257;
  auto x = random_floats(sz(cols), 77, -8, 8);
  std::vector<float> out(x.size());
  ASSERT_TRUE(cpu::softmax(f32_view(x, {1, cols}), f32_view(out, {1, cols})).ok());
  const std::vector<double> want = ref_softmax(x, 1, cols);
  double diff = 0, norm = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    diff += (out[i] - want[i]) * (out[i] - want[i]);
    norm += want[i] * want[i];
  }
  EXPECT_LT(std::sqrt(diff / norm), 1e-6);
}

TEST(CpuSoftmax, MatchesReferenceAndRowsSumToOne) {
  uint32_t seed = 1500;
  for (int64_t rows : kAwkward)
    for (int64_t cols : kAwkward) {
      SCOPED_TRACE(::testing::Message() << rows << "x" << cols);
      auto x = random_floats(sz(rows * cols), seed++, -5, 5);
      std::vector<float> out(x.size());
      ASSERT_TRUE(cpu::softmax(f32_view(x, {rows, cols}), f32_view(out, {rows, cols})).ok());
      EXPECT_TRUE(all_close(out, ref_softmax(x, rows, cols), 1e-5, 1e-7));
      for (int64_t r = 0; r < rows; ++r) {
        double sum = 0.0;
        for (int64_t c = 0; c < cols; ++c) sum += out[sz(r * cols + c)];
        EXPECT_NEAR(sum, 1.0, 1e-5) << "row " << r;
      }
    }
}

TEST(CpuSoftmax, LargeInputsDoNotOverflow) {
  std::vector<float> x = {1000.0f, 999.0f, 998.0f, 1000.0f,    // large positive
                          -1000.0f, -999.0f, -1000.0f, -1001.0f,  // large negative
                          3e38f, 3e38f, 0.0f, -3e38f};          // near the f32 limit
  std::vector<float> out(x.size());
  ASSERT_TRUE(cpu::softmax(f32_view(x, {3, 4}), f32_view(out, {3, 4})).ok());
  EXPECT_TRUE(all_finite(out));
  EXPECT_TRUE(all_close(out, ref_softmax(x, 3, 4), 1e-5, 1e-7));
  EXPECT_FLOAT_EQ(out[8], 0.5f);
  EXPECT_FLOAT_EQ(out[9], 0.5f);
}

TEST(CpuSoftmax, InPlaceMatchesOutOfPlace) {
  const int64_t rows = 7, cols = 17;
  auto x = random_floats(sz(rows * cols), 1550, -10, 10);
  auto want = ref_softmax(x, rows, cols);
  ASSERT_TRUE(cpu::softmax(f32_view(x, {rows, cols}), f32_view(x, {rows, cols})).ok());
  EXPECT_TRUE(all_close(x, want, 1e-5, 1e-7));
}

// ---------------------------------------------------------------------------------
// slice
// ---------------------------------------------------------------------------------

TEST(CpuSlice, CopiesTheColumnRange) {
  uint32_t seed = 1600;
  for (int64_t rows : {1, 3, 17})
    for (int64_t cols : {1, 7, 79})
      for (int64_t start : {int64_t{0}, cols / 3, cols - 1})
        for (int64_t length : {int64_t{1}, (cols - start + 1) / 2, cols - start}) {
          if (length < 1) continue;
          SCOPED_TRACE(::testing::Message() << rows << "x" << cols << " start=" << start << " length=" << length);
          auto x = random_floats(sz(rows * cols), seed++);
          std::vector<float> out(sz(rows * length), std::numeric_limits<float>::quiet_NaN());
          ASSERT_TRUE(cpu::slice(f32_view(x, {rows, cols}), start, length, f32_view(out, {rows, length})).ok());
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < length; ++c) ASSERT_EQ(out[sz(r * length + c)], x[sz(r * cols + start + c)]);
        }
}

// ---------------------------------------------------------------------------------
// rope
// ---------------------------------------------------------------------------------

// The kernel computes the angle in f32 (as Hugging Face does), so its error grows
// with the angle: allow |angle| * 2^-22 per unit of input magnitude on top of 1e-5.
::testing::AssertionResult rope_close(const std::vector<float>& got, const std::vector<double>& want,
                                      const std::vector<float>& x, const std::vector<int32_t>& pos, int64_t width,
                                      int64_t head_dim) {
  const int64_t half = head_dim / 2;
  for (size_t e = 0; e < got.size(); ++e) {
    const int64_t r = static_cast<int64_t>(e) / width, col = static_cast<int64_t>(e) % width;
    const int64_t head_start = col - col % head_dim, i = (col % head_dim) % half;
    const double pair = std::abs(x[sz(r * width + head_start + i)]) + std::abs(x[sz(r * width + head_start + i + half)]);
    const double angle = std::abs(static_cast<double>(pos[sz(r)]));  // inv_freq <= 1
    const double tol = 1e-5 * (1.0 + std::abs(want[e])) + angle * std::ldexp(1.0, -22) * pair;
    if (!(std::abs(got[e] - want[e]) <= tol))
      return ::testing::AssertionFailure() << "[" << e << "] got " << got[e] << " want " << want[e];
  }
  return ::testing::AssertionSuccess();
}

TEST(CpuRope, RotateHalfMatchesReferenceOverHeadsAndPositions) {
  uint32_t seed = 1700;
  for (double theta : {10000.0, 500000.0})
    for (int64_t head_dim : {2, 8, 64})
      for (int64_t heads : {1, 3, 4})
        for (int64_t rows : {1, 3, 17}) {
          SCOPED_TRACE(::testing::Message() << "theta=" << theta << " head_dim=" << head_dim << " heads=" << heads
                                            << " rows=" << rows);
          const int64_t width = heads * head_dim;
          auto x = random_floats(sz(rows * width), seed++);
          const int32_t first = static_cast<int32_t>(seed % 50) + 5;  // positions not starting at 0
          std::vector<int32_t> pos(sz(rows));
          for (int64_t r = 0; r < rows; ++r) pos[sz(r)] = first + static_cast<int32_t>(r);
          std::vector<float> out(x.size());
          ASSERT_TRUE(cpu::rope(f32_view(x, {rows, width}), i32_view(pos, {rows}), head_dim, static_cast<float>(theta),
                                f32_view(out, {rows, width}))
                          .ok());
          EXPECT_TRUE(rope_close(out, ref_rope(x, pos, rows, width, head_dim, theta), x, pos, width, head_dim));
        }
}

TEST(CpuRope, ArbitraryAndLargePositionsMatchReference) {
  const int64_t rows = 5, head_dim = 16, width = 3 * head_dim;
  auto x = random_floats(sz(rows * width), 1750);
  std::vector<int32_t> pos = {4095, 0, 17, 1000, 7};
  std::vector<float> out(x.size());
  ASSERT_TRUE(
      cpu::rope(f32_view(x, {rows, width}), i32_view(pos, {rows}), head_dim, 10000.0f, f32_view(out, {rows, width})).ok());
  EXPECT_TRUE(rope_close(out, ref_rope(x, pos, rows, width, head_dim, 10000.0), x, pos, width, head_dim));
}

TEST(CpuRope, PairsElementIWithIPlusHalfWithinEachHead) {
  // head_dim 4, two heads: a unit vector in slot 0 of head 1 at position 1 rotates by
  // angle 1 (inv_freq[0] = 1) into slot 0 + half = 2 of the same head.
  const int64_t head_dim = 4, width = 8;
  std::vector<float> x(width, 0.0f), out(width);
  x[4] = 1.0f;
  std::vector<int32_t> pos = {1};
  ASSERT_TRUE(cpu::rope(f32_view(x, {1, width}), i32_view(pos, {1}), head_dim, 10000.0f, f32_view(out, {1, width})).ok());
  const std::vector<double> want = {0, 0, 0, 0, std::cos(1.0), 0, std::sin(1.0), 0};
  EXPECT_TRUE(all_close(out, want, 1e-6, 1e-6));
  // Slot 1 uses inv_freq[1] = theta^(-2/4) = 0.01.
  std::fill(x.begin(), x.end(), 0.0f);
  x[1] = 1.0f;
  pos[0] = 100;
  ASSERT_TRUE(cpu::rope(f32_view(x, {1, width}), i32_view(pos, {1}), head_dim, 10000.0f, f32_view(out, {1, width})).ok());
  const std::vector<double> want2 = {0, std::cos(1.0), 0, std::sin(1.0), 0, 0, 0, 0};
  EXPECT_TRUE(all_close(out, want2, 1e-5, 1e-5));
}

TEST(CpuRope, PositionZeroIsIdentity) {
  const int64_t rows = 3, width = 4 * 8;
  auto x = random_floats(sz(rows * width), 1760);
  std::vector<int32_t> pos = {0, 0, 0};
  std::vector<float> out(x.size());
  ASSERT_TRUE(cpu::rope(f32_view(x, {rows, width}), i32_view(pos, {rows}), 8, 10000.0f, f32_view(out, {rows, width})).ok());
  EXPECT_EQ(out, x);
}

TEST(CpuRope, NegativePositionIsAnError) {
  const int64_t rows = 3, width = 16;
  auto x = random_floats(sz(rows * width), 1770);
  std::vector<int32_t> pos = {4, 5, -1};
  std::vector<float> out(x.size());
  const Status s = cpu::rope(f32_view(x, {rows, width}), i32_view(pos, {rows}), 8, 10000.0f, f32_view(out, {rows, width}));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  EXPECT_NE(s.message().find("-1"), std::string::npos) << s.message();
}

// ---------------------------------------------------------------------------------
// kv_append
// ---------------------------------------------------------------------------------

constexpr float kSentinel = -1536.0f;  // exactly representable in f16 and bf16

// A cache of `capacity` rows followed by `guard` rows that nothing may touch.
struct Cache {
  Stored storage;
  int64_t capacity, width;
  TensorView view() {  // only the first `capacity` rows
    return TensorView::contiguous(storage.data(), {capacity, width}, storage.dtype);
  }
  float at(int64_t row, int64_t col) const {
    const size_t i = sz(row * width + col);
    if (storage.dtype == DType::kF32) return storage.f32[i];
    return storage.dtype == DType::kF16 ? djinn::half_to_float(storage.bits[i]) : djinn::bf16_to_float(storage.bits[i]);
  }
};

Cache make_cache(DType dtype, int64_t capacity, int64_t width, int64_t guard = 4) {
  return Cache{store(std::vector<float>(sz((capacity + guard) * width), kSentinel), dtype), capacity, width};
}

TEST(CpuKvAppend, WritesRowsPastToPastPlusSeqAndNothingElse) {
  uint32_t seed = 1800;
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16})
    for (int64_t width : {1, 7, 79})
      for (auto [past, seq] : {std::pair<int64_t, int64_t>{0, 1}, {0, 17}, {5, 3}, {16, 1}, {9, 8}, {4, 0}}) {
        SCOPED_TRACE(::testing::Message() << dtype_str(dtype) << " width=" << width << " past=" << past << " seq=" << seq);
        const int64_t capacity = 17;
        Cache cache = make_cache(dtype, capacity, width);
        auto fresh = random_floats(sz(seq * width), seed++);
        const Stored rounded = store(fresh, dtype);
        ASSERT_TRUE(cpu::kv_append(cache.view(), f32_view(fresh, {seq, width}), past).ok());
        for (int64_t r = 0; r < capacity + 4; ++r)
          for (int64_t c = 0; c < width; ++c) {
            const bool written = r >= past && r < past + seq;
            const float want = written ? rounded.values[sz((r - past) * width + c)] : kSentinel;
            ASSERT_EQ(cache.at(r, c), want) << "row " << r << " col " << c;
          }
      }
}

TEST(CpuKvAppend, F16CacheStoresRoundedBits) {
  const int64_t capacity = 7, width = 17, past = 2, seq = 3;
  Cache cache = make_cache(DType::kF16, capacity, width);
  auto fresh = random_floats(sz(seq * width), 1850, -70000, 70000);  // includes values past f16's max
  fresh[0] = 1.0f + 1.0f / 2048.0f;                                  // a tie: rounds to even (1.0)
  fresh[1] = 1e-6f;                                                  // an f16 subnormal
  ASSERT_TRUE(cpu::kv_append(cache.view(), f32_view(fresh, {seq, width}), past).ok());
  for (int64_t i = 0; i < seq * width; ++i)
    ASSERT_EQ(cache.storage.bits[sz(past * width + i)], djinn::float_to_half(fresh[sz(i)])) << i;
  EXPECT_EQ(cache.at(past, 0), 1.0f);
}

TEST(CpuKvAppend, OverflowPastCapacityIsOutOfRangeAndWritesNothing) {
  for (DType dtype : {DType::kF32, DType::kF16}) {
    for (auto [past, seq] : {std::pair<int64_t, int64_t>{15, 3}, {17, 1}, {0, 18}, {-1, 1}}) {
      SCOPED_TRACE(::testing::Message() << dtype_str(dtype) << " past=" << past << " seq=" << seq);
      const int64_t capacity = 17, width = 7;
      Cache cache = make_cache(dtype, capacity, width);
      auto fresh = random_floats(sz(seq * width), 1900);
      const Status s = cpu::kv_append(cache.view(), f32_view(fresh, {seq, width}), past);
      ASSERT_FALSE(s.ok());
      EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
      for (int64_t r = 0; r < capacity + 4; ++r)
        for (int64_t c = 0; c < width; ++c) ASSERT_EQ(cache.at(r, c), kSentinel) << "row " << r;
    }
  }
}

TEST(CpuKvAppend, ExactlyFillingTheCacheSucceeds) {
  const int64_t capacity = 17, width = 3;
  Cache cache = make_cache(DType::kF32, capacity, width);
  auto fresh = random_floats(sz(2 * width), 1950);
  ASSERT_TRUE(cpu::kv_append(cache.view(), f32_view(fresh, {2, width}), capacity - 2).ok());
  EXPECT_EQ(cache.at(capacity - 1, width - 1), fresh.back());
  EXPECT_EQ(cache.at(capacity, 0), kSentinel);  // first guard row
}

// ---------------------------------------------------------------------------------
// attention
// ---------------------------------------------------------------------------------

struct AttentionCase {
  int64_t n_heads, n_kv_heads, head_dim, past, seq, capacity;
};

void check_attention(const AttentionCase& c, DType cache_dtype, uint32_t seed) {
  SCOPED_TRACE(::testing::Message() << "heads=" << c.n_heads << " kv_heads=" << c.n_kv_heads << " head_dim="
                                    << c.head_dim << " past=" << c.past << " seq=" << c.seq << " capacity="
                                    << c.capacity << " cache=" << dtype_str(cache_dtype));
  const int64_t q_width = c.n_heads * c.head_dim, kv_width = c.n_kv_heads * c.head_dim;
  const int64_t total = c.past + c.seq;
  auto q = random_floats(sz(c.seq * q_width), seed, -2, 2);
  // Rows at or past `total` hold NaN: attention must never read them.
  auto k_raw = random_floats(sz(c.capacity * kv_width), seed + 1, -2, 2);
  auto v_raw = random_floats(sz(c.capacity * kv_width), seed + 2, -2, 2);
  for (size_t i = sz(total * kv_width); i < k_raw.size(); ++i)
    k_raw[i] = v_raw[i] = std::numeric_limits<float>::quiet_NaN();
  Stored k = store(k_raw, cache_dtype), v = store(v_raw, cache_dtype);
  OpAttrs attrs;
  attrs.n_heads = c.n_heads;
  attrs.n_kv_heads = c.n_kv_heads;
  attrs.head_dim = c.head_dim;
  attrs.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  std::vector<float> out(sz(c.seq * q_width), std::numeric_limits<float>::quiet_NaN());
  ASSERT_TRUE(cpu::attention(f32_view(q, {c.seq, q_width}), k.view({c.capacity, kv_width}),
                             v.view({c.capacity, kv_width}), attrs, c.past, f32_view(out, {c.seq, q_width}))
                  .ok());
  EXPECT_TRUE(all_finite(out));
  EXPECT_TRUE(all_close(out, ref_attention(q, k.values, v.values, c.seq, c.past, c.n_heads, c.n_kv_heads, c.head_dim,
                                           attrs.scale),
                        2e-5, 2e-5));
}

TEST(CpuAttention, CausalMhaWithPastAndSeveralQueryRows) {
  check_attention({3, 3, 7, 5, 4, 17}, DType::kF32, 2000);
  check_attention({1, 1, 1, 2, 3, 7}, DType::kF32, 2010);
  check_attention({2, 2, 79, 3, 17, 79}, DType::kF32, 2020);
}

TEST(CpuAttention, GroupedQueryHeadsShareKvHeads) {
  check_attention({4, 2, 8, 6, 3, 17}, DType::kF32, 2100);
  check_attention({4, 2, 17, 11, 7, 79}, DType::kF32, 2110);
  check_attention({6, 3, 4, 0, 5, 7}, DType::kF32, 2120);
}

TEST(CpuAttention, MultiQuerySingleKvHead) {
  check_attention({4, 1, 16, 0, 7, 9}, DType::kF32, 2200);
  check_attention({4, 1, 7, 9, 3, 17}, DType::kF32, 2210);
}

TEST(CpuAttention, PrefillFromEmptyCacheAndSingleTokenDecode) {
  check_attention({4, 2, 8, 0, 1, 17}, DType::kF32, 2300);   // one-token prompt
  check_attention({4, 2, 8, 0, 17, 17}, DType::kF32, 2310);  // prompt fills the cache
  check_attention({4, 2, 8, 16, 1, 17}, DType::kF32, 2320);  // decode into the last row
  check_attention({3, 3, 7, 78, 1, 79}, DType::kF32, 2330);
}

TEST(CpuAttention, F16AndBf16CacheMatchReferenceOnRoundedValues) {
  uint32_t seed = 2400;
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    check_attention({4, 2, 8, 6, 3, 17}, dtype, seed += 10);
    check_attention({4, 1, 16, 5, 4, 17}, dtype, seed += 10);
    check_attention({3, 3, 7, 16, 1, 17}, dtype, seed += 10);
  }
}

TEST(CpuAttention, TotalPastCapacityIsOutOfRange) {
  const int64_t capacity = 8, head_dim = 4, n_heads = 2, seq = 3, past = 6;
  auto q = random_floats(sz(seq * n_heads * head_dim), 2500);
  auto k = random_floats(sz(capacity * head_dim), 2501), v = random_floats(sz(capacity * head_dim), 2502);
  OpAttrs attrs;
  attrs.n_heads = n_heads;
  attrs.n_kv_heads = 1;
  attrs.head_dim = head_dim;
  attrs.scale = 0.5f;
  std::vector<float> out(q.size());
  const Status s = cpu::attention(f32_view(q, {seq, n_heads * head_dim}), f32_view(k, {capacity, head_dim}),
                                  f32_view(v, {capacity, head_dim}), attrs, past, f32_view(out, {seq, n_heads * head_dim}));
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
}

// ---------------------------------------------------------------------------------
// last_row, argmax
// ---------------------------------------------------------------------------------

TEST(CpuLastRow, CopiesTheLastRow) {
  uint32_t seed = 2600;
  for (int64_t rows : kAwkward)
    for (int64_t cols : kAwkward) {
      auto x = random_floats(sz(rows * cols), seed++);
      std::vector<float> out(sz(cols), std::numeric_limits<float>::quiet_NaN());
      ASSERT_TRUE(cpu::last_row(f32_view(x, {rows, cols}), f32_view(out, {1, cols})).ok());
      EXPECT_EQ(out, std::vector<float>(x.end() - cols, x.end())) << rows << "x" << cols;
    }
}

TEST(CpuLastRow, EmptyInputIsAnError) {
  std::vector<float> x, out(3);
  const Status s = cpu::last_row(f32_view(x, {0, 3}), f32_view(out, {1, 3}));
  EXPECT_FALSE(s.ok());
}

TEST(CpuArgmax, MatchesReferenceOnRandomRows) {
  uint32_t seed = 2700;
  for (int64_t rows : kAwkward)
    for (int64_t cols : kAwkward) {
      auto x = random_floats(sz(rows * cols), seed++, -100, -1);  // all negative
      std::vector<int32_t> out(sz(rows), -7);
      ASSERT_TRUE(cpu::argmax(f32_view(x, {rows, cols}), i32_view(out, {rows})).ok());
      for (int64_t r = 0; r < rows; ++r) {
        int64_t best = 0;
        for (int64_t c = 1; c < cols; ++c)
          if (x[sz(r * cols + c)] > x[sz(r * cols + best)]) best = c;
        ASSERT_EQ(out[sz(r)], best) << rows << "x" << cols << " row " << r;
      }
    }
}

TEST(CpuArgmax, TiesGoToTheFirstMaximum) {
  std::vector<float> x = {1, 5, 2, 5, 5,      // tie at 1, 3, 4
                          7, 7, 7, 7, 7,      // all equal
                          -3, -1, -2, -1, -9, // negative tie
                          0, 0, 0, 0, 1};     // last
  std::vector<int32_t> out(4, -7);
  ASSERT_TRUE(cpu::argmax(f32_view(x, {4, 5}), i32_view(out, {4})).ok());
  EXPECT_EQ(out, (std::vector<int32_t>{1, 0, 1, 4}));
}

TEST(CpuArgmax, EmptyRowIsAnError) {
  std::vector<float> x;
  std::vector<int32_t> out(2);
  EXPECT_FALSE(cpu::argmax(f32_view(x, {2, 0}), i32_view(out, {2})).ok());
}

// ---------------------------------------------------------------------------------
// Every op on finite inputs gives finite outputs
// ---------------------------------------------------------------------------------

TEST(CpuKernelsFinite, EveryOpOnFiniteInputsGivesFiniteOutputs) {
  const int64_t rows = 17, cols = 79, vocab = 33, head_dim = 8, heads = 4, kv_heads = 2, capacity = 40;
  auto x = random_floats(sz(rows * cols), 3000, -50, 50);  // large, but finite
  auto y = random_floats(sz(rows * cols), 3001, -50, 50);
  std::vector<float> out(sz(rows * cols));
  const TensorView xv = f32_view(x, {rows, cols}), yv = f32_view(y, {rows, cols}), ov = f32_view(out, {rows, cols});
  auto run = [&](const char* op, const Status& s, const std::vector<float>& result) {
    EXPECT_TRUE(s.ok()) << op << ": " << s.message();
    EXPECT_TRUE(all_finite(result)) << op;
  };

  Stored table = store(random_floats(sz(vocab * cols), 3002), DType::kF16);
  auto ids = random_ints(sz(rows), 3003, 0, static_cast<int32_t>(vocab - 1));
  run("embedding", cpu::embedding(table.view({vocab, cols}), i32_view(ids, {rows}), ov), out);

  Stored w = store(random_floats(sz(cols * cols), 3004), DType::kBF16);
  run("matmul", cpu::matmul(xv, w.view({cols, cols}), true, ov), out);
  run("add", cpu::add(xv, yv, ov), out);
  run("mul", cpu::mul(xv, yv, ov), out);

  auto g = random_floats(sz(cols), 3005), b = random_floats(sz(cols), 3006);
  std::vector<float> flat(sz(rows * cols), 3.25f);  // constant rows: zero variance
  run("layernorm", cpu::layernorm(xv, f32_view(g, {cols}), f32_view(b, {cols}), 1e-5f, ov), out);
  run("layernorm(constant rows)",
      cpu::layernorm(f32_view(flat, {rows, cols}), f32_view(g, {cols}), f32_view(b, {cols}), 1e-5f, ov), out);
  std::vector<float> zeros(sz(rows * cols), 0.0f);
  run("rmsnorm", cpu::rmsnorm(xv, f32_view(g, {cols}), 1e-6f, ov), out);
  run("rmsnorm(zero rows)", cpu::rmsnorm(f32_view(zeros, {rows, cols}), f32_view(g, {cols}), 1e-6f, ov), out);
  run("gelu_new", cpu::gelu_new(xv, ov), out);
  run("silu", cpu::silu(xv, ov), out);
  auto big = random_floats(sz(rows * cols), 3007, -1000, 1000);
  run("softmax", cpu::softmax(f32_view(big, {rows, cols}), ov), out);

  std::vector<float> sliced(sz(rows * 5));
  run("slice", cpu::slice(xv, 70, 5, f32_view(sliced, {rows, 5})), sliced);

  const int64_t q_width = heads * head_dim, kv_width = kv_heads * head_dim;
  auto q = random_floats(sz(rows * q_width), 3008, -10, 10);
  std::vector<int32_t> pos(sz(rows));
  for (int64_t r = 0; r < rows; ++r) pos[sz(r)] = static_cast<int32_t>(20 + r);
  std::vector<float> q_rot(q.size());
  run("rope", cpu::rope(f32_view(q, {rows, q_width}), i32_view(pos, {rows}), head_dim, 10000.0f,
                        f32_view(q_rot, {rows, q_width})),
      q_rot);

  Cache k = make_cache(DType::kF16, capacity, kv_width, 0), v = make_cache(DType::kF16, capacity, kv_width, 0);
  auto kv_past = random_floats(sz(20 * kv_width), 3009, -10, 10), kv_new = random_floats(sz(rows * kv_width), 3010, -10, 10);
  EXPECT_TRUE(cpu::kv_append(k.view(), f32_view(kv_past, {20, kv_width}), 0).ok());
  EXPECT_TRUE(cpu::kv_append(v.view(), f32_view(kv_past, {20, kv_width}), 0).ok());
  EXPECT_TRUE(cpu::kv_append(k.view(), f32_view(kv_new, {rows, kv_width}), 20).ok());
  EXPECT_TRUE(cpu::kv_append(v.view(), f32_view(kv_new, {rows, kv_width}), 20).ok());
  OpAttrs attrs;
  attrs.n_heads = heads;
  attrs.n_kv_heads = kv_heads;
  attrs.head_dim = head_dim;
  attrs.scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  std::vector<float> attn(sz(rows * q_width));
  run("attention", cpu::attention(f32_view(q_rot, {rows, q_width}), k.view(), v.view(), attrs, 20,
                                  f32_view(attn, {rows, q_width})),
      attn);

  std::vector<float> last(sz(cols));
  run("last_row", cpu::last_row(xv, f32_view(last, {1, cols})), last);
  std::vector<int32_t> arg(sz(rows), -1);
  EXPECT_TRUE(cpu::argmax(xv, i32_view(arg, {rows})).ok());
  for (int32_t a : arg) EXPECT_TRUE(a >= 0 && a < cols) << a;
}

// batched_decode_attention is kv_append + attention per session, each at its own
// (ragged) position: compare it with exactly that, bit for bit.
TEST(CpuBatchedDecodeAttention, EqualsPerSessionAppendAndAttendAtRaggedPositions) {
  for (DType kv_dtype : {DType::kF32, DType::kF16}) {
    const int64_t batch = 3, n_heads = 4, n_kv_heads = 2, head_dim = 8, capacity = 40;
    const int64_t hq = n_heads * head_dim, hkv = n_kv_heads * head_dim;
    OpAttrs attrs;
    attrs.n_heads = n_heads;
    attrs.n_kv_heads = n_kv_heads;
    attrs.head_dim = head_dim;
    attrs.scale = 0.3f;
    std::vector<float> q = random_floats(sz(batch * hq), 1), k = random_floats(sz(batch * hkv), 2),
                       v = random_floats(sz(batch * hkv), 3);
    std::vector<int32_t> pos = {0, 17, 39};  // first row, middle, last row of the cache
    // Two copies of every session's caches, pre-filled with the same history.
    std::vector<Stored> batched, single;
    for (int64_t i = 0; i < 2 * batch; ++i) {
      batched.push_back(store(random_floats(sz(capacity * hkv), static_cast<uint32_t>(10 + i)), kv_dtype));
      single.push_back(batched.back());
    }
    std::vector<TensorView> cache_views;
    for (Stored& c : batched) cache_views.push_back(c.view({capacity, hkv}));
    std::vector<const TensorView*> caches;
    for (const TensorView& c : cache_views) caches.push_back(&c);
    std::vector<float> out(sz(batch * hq), std::nanf(""));
    ASSERT_TRUE(cpu::batched_decode_attention(f32_view(q, {batch, hq}), f32_view(k, {batch, hkv}), f32_view(v, {batch, hkv}),
                                              i32_view(pos, {batch}), caches, attrs, f32_view(out, {batch, hq}))
                    .ok());
    for (int64_t b = 0; b < batch; ++b) {
      std::vector<float> qb(q.begin() + b * hq, q.begin() + (b + 1) * hq), kb(k.begin() + b * hkv, k.begin() + (b + 1) * hkv),
          vb(v.begin() + b * hkv, v.begin() + (b + 1) * hkv), ob(sz(hq));
      const TensorView kc = single[sz(2 * b)].view({capacity, hkv}), vc = single[sz(2 * b + 1)].view({capacity, hkv});
      ASSERT_TRUE(cpu::kv_append(kc, f32_view(kb, {1, hkv}), pos[sz(b)]).ok());
      ASSERT_TRUE(cpu::kv_append(vc, f32_view(vb, {1, hkv}), pos[sz(b)]).ok());
      ASSERT_TRUE(cpu::attention(f32_view(qb, {1, hq}), kc, vc, attrs, pos[sz(b)], f32_view(ob, {1, hq})).ok());
      for (int64_t i = 0; i < hq; ++i) EXPECT_EQ(out[sz(b * hq + i)], ob[sz(i)]) << "session " << b << " column " << i;
      EXPECT_EQ(batched[sz(2 * b)].bits, single[sz(2 * b)].bits);  // the same rows were written
      EXPECT_EQ(batched[sz(2 * b)].f32, single[sz(2 * b)].f32);
    }
  }
}

TEST(CpuBatchedDecodeAttention, APositionPastCapacityIsOutOfRange) {
  const int64_t hkv = 8, capacity = 4;
  OpAttrs attrs;
  attrs.n_heads = attrs.n_kv_heads = 1;
  attrs.head_dim = 8;
  attrs.scale = 1.0f;
  std::vector<float> q = random_floats(8, 1), k = random_floats(8, 2), v = random_floats(8, 3), out(8);
  std::vector<float> kc(sz(capacity * hkv)), vc(sz(capacity * hkv));
  std::vector<int32_t> pos = {4};
  const TensorView kcv = f32_view(kc, {capacity, hkv}), vcv = f32_view(vc, {capacity, hkv});
  const TensorView* caches[] = {&kcv, &vcv};
  const Status s = cpu::batched_decode_attention(f32_view(q, {1, 8}), f32_view(k, {1, 8}), f32_view(v, {1, 8}),
                                                 i32_view(pos, {1}), caches, attrs, f32_view(out, {1, 8}));
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange) << s.to_string();
}

}  // namespace
