#include "djinn/backend/cpu/cpu_kernels.h"
#include "djinn/backend/cpu/compute_pool.h"
#include "djinn/backend/cpu/skinny_gemm.h"
#include "djinn/backend/cpu/vector_kernels.h"

#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace djinn::cpu {
namespace {

// A row of `width` floating elements of `dtype` as f32: the pointer itself when the
// storage already is f32, else widened into `scratch`.
const float* row_as_f32(const void* row, DType dtype, int64_t width, std::vector<float>& scratch) {
  if (dtype == DType::kF32) return static_cast<const float*>(row);
  scratch.resize(static_cast<size_t>(width));
  convert_to_f32(row, dtype, static_cast<size_t>(width), scratch.data());
  return scratch.data();
}

const std::byte* element_ptr(const TensorView& t, int64_t row, int64_t col) {
  return static_cast<const std::byte*>(t.data) +
         static_cast<size_t>(row * t.strides[0] + col) * dtype_size(t.dtype);
}

}  // namespace

Status embedding(const TensorView& table, const TensorView& ids, const TensorView& out) {
  const int64_t vocab = table.dim(0), hidden = table.dim(1), rows = ids.dim(0);
  const auto* id = ids.as<const int32_t>();
  for (int64_t r = 0; r < rows; ++r) {
    if (id[r] < 0 || id[r] >= vocab)
      return out_of_range(fmt::format("token id {} at position {} is outside the vocabulary [0, {})", id[r], r, vocab));
    convert_to_f32(table.row_ptr(id[r]), table.dtype, static_cast<size_t>(hidden), out.as<float>() + r * hidden);
  }
  return {};
}

Status matmul(const TensorView& x, const TensorView& w, bool transpose_b, const TensorView& out) {
  const int64_t m = x.dim(0), k = x.dim(1), n = out.dim(1);
  if (m == 0) return {};
  if (k == 0) {  // BLAS rejects zero leading dimensions; the product of empty sums is zero
    std::fill_n(out.as<float>(), m * n, 0.0f);
    return {};
  }
  const float* w_f32 = w.as<const float>();
  std::vector<float> widened;
  if (w.dtype != DType::kF32) {
    widened.resize(static_cast<size_t>(w.numel()));
    convert_to_f32(w.data, w.dtype, widened.size(), widened.data());
    w_f32 = widened.data();
  }
  // out[m, n] = x[m, k] . (w[n, k])^T   or   x[m, k] . w[k, n]
  const float* xs = x.as<const float>();
  float* ys = out.as<float>();
  if (skinny_matmul(xs, m, k, w_f32, n, transpose_b, ys)) return {};  // 2..16 rows, AVX-512
  // OpenBLAS, one thread per slice of output columns (see ComputePool).
  const int ldb = static_cast<int>(transpose_b ? k : n);
  ComputePool::instance().for_ranges(n, 64, [&](int64_t begin, int64_t end) {
    const float* w_slice = transpose_b ? w_f32 + begin * k : w_f32 + begin;
    const int cols = static_cast<int>(end - begin);
    if (m == 1) {
      if (transpose_b) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, cols, static_cast<int>(k), 1.0f, w_slice, ldb, xs, 1, 0.0f, ys + begin, 1);
      } else {
        cblas_sgemv(CblasRowMajor, CblasTrans, static_cast<int>(k), cols, 1.0f, w_slice, ldb, xs, 1, 0.0f, ys + begin, 1);
      }
      return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, transpose_b ? CblasTrans : CblasNoTrans, static_cast<int>(m), cols,
                static_cast<int>(k), 1.0f, xs, static_cast<int>(k), w_slice, ldb, 0.0f, ys + begin, static_cast<int>(n));
  });
  return {};
}

Status add(const TensorView& a, const TensorView& b, const TensorView& out) {
  const int64_t rows = a.dim(0), cols = a.dim(1);
  const float* pa = a.as<const float>();
  float* po = out.as<float>();
  std::vector<float> scratch;
  if (b.rank() == 1) {  // row broadcast (a bias)
    const float* bias = row_as_f32(b.data, b.dtype, cols, scratch);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) po[r * cols + c] = pa[r * cols + c] + bias[c];
    return {};
  }
  const float* pb = row_as_f32(b.data, b.dtype, rows * cols, scratch);
  for (int64_t i = 0; i < rows * cols; ++i) po[i] = pa[i] + pb[i];
  return {};
}

Status mul(const TensorView& a, const TensorView& b, const TensorView& out) {
  const int64_t n = a.numel();
  std::vector<float> scratch;
  const float* pa = a.as<const float>();
  const float* pb = row_as_f32(b.data, b.dtype, n, scratch);
  float* po = out.as<float>();
  for (int64_t i = 0; i < n; ++i) po[i] = pa[i] * pb[i];
  return {};
}

Status layernorm(const TensorView& x, const TensorView& gamma, const TensorView& beta, float eps,
                 const TensorView& out) {
  const int64_t rows = x.dim(0), hidden = x.dim(1);
  std::vector<float> g_scratch, b_scratch;
  const float* g = row_as_f32(gamma.data, gamma.dtype, hidden, g_scratch);
  const float* b = row_as_f32(beta.data, beta.dtype, hidden, b_scratch);
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x.as<const float>() + r * hidden;
    float* o = out.as<float>() + r * hidden;
    float mean = 0.0f;
    for (int64_t i = 0; i < hidden; ++i) mean += in[i];
    mean /= static_cast<float>(hidden);
    float var = 0.0f;
    for (int64_t i = 0; i < hidden; ++i) var += (in[i] - mean) * (in[i] - mean);
    var /= static_cast<float>(hidden);
    const float inv = 1.0f / std::sqrt(var + eps);
    for (int64_t i = 0; i < hidden; ++i) o[i] = (in[i] - mean) * inv * g[i] + b[i];
  }
  return {};
}

Status rmsnorm(const TensorView& x, const TensorView& gamma, float eps, const TensorView& out) {
  const int64_t rows = x.dim(0), hidden = x.dim(1);
  std::vector<float> g_scratch;
  const float* g = row_as_f32(gamma.data, gamma.dtype, hidden, g_scratch);
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = x.as<const float>() + r * hidden;
    float* o = out.as<float>() + r * hidden;
    float sum_sq = 0.0f;
    for (int64_t i = 0; i < hidden; ++i) sum_sq += in[i] * in[i];
    const float inv = 1.0f / std::sqrt(sum_sq / static_cast<float>(hidden) + eps);
    for (int64_t i = 0; i < hidden; ++i) o[i] = g[i] * (in[i] * inv);
  }
  return {};
}

Status gelu_new(const TensorView& x, const TensorView& out) {
  // Row by row, so that a row's bits do not depend on the rows beside it (a batched
  // decode step gives each session what it would get alone).
  const int64_t cols = x.rank() == 0 ? 1 : x.dim(x.rank() - 1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  for (int64_t r = 0; r < rows; ++r) gelu_new_f32(x.as<const float>() + r * cols, out.as<float>() + r * cols, cols);
  return {};
}

namespace {
// silu and silu_mul share it, so that silu_mul is silu then mul bit for bit.
inline float silu_of(float v) { return v / (1.0f + std::exp(-v)); }
}  // namespace

Status silu(const TensorView& x, const TensorView& out) {
  const float* in = x.as<const float>();
  float* o = out.as<float>();
  for (int64_t i = 0, n = x.numel(); i < n; ++i) o[i] = silu_of(in[i]);
  return {};
}

Status silu_mul(const TensorView& a, const TensorView& b, const TensorView& out) {
  const float* x = a.as<const float>();
  const float* y = b.as<const float>();
  float* o = out.as<float>();
  for (int64_t i = 0, n = a.numel(); i < n; ++i) o[i] = silu_of(x[i]) * y[i];
  return {};
}

Status rope(const TensorView& x, const TensorView& positions, int64_t head_dim, float theta, const TensorView& out) {
  const int64_t rows = x.dim(0), width = x.dim(1), half = head_dim / 2;
  const auto* pos = positions.as<const int32_t>();
  std::vector<float> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i)
    inv_freq[static_cast<size_t>(i)] =
        static_cast<float>(1.0 / std::pow(static_cast<double>(theta), static_cast<double>(2 * i) / static_cast<double>(head_dim)));
  std::vector<float> cos_row(static_cast<size_t>(half)), sin_row(static_cast<size_t>(half));
  for (int64_t r = 0; r < rows; ++r) {
    if (pos[r] < 0) return out_of_range(fmt::format("rope: negative position {} at row {}", pos[r], r));
    for (int64_t i = 0; i < half; ++i) {
      // Same order of operations as Hugging Face: the angle in f32, then cos / sin.
      const float angle = static_cast<float>(pos[r]) * inv_freq[static_cast<size_t>(i)];
      cos_row[static_cast<size_t>(i)] = std::cos(angle);
      sin_row[static_cast<size_t>(i)] = std::sin(angle);
    }
    const float* in = x.as<const float>() + r * width;
    float* o = out.as<float>() + r * width;
    for (int64_t head = 0; head < width / head_dim; ++head) {
      const float* h_in = in + head * head_dim;
      float* h_out = o + head * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float x1 = h_in[i], x2 = h_in[i + half];
        const float c = cos_row[static_cast<size_t>(i)], s = sin_row[static_cast<size_t>(i)];
        h_out[i] = x1 * c - x2 * s;
        h_out[i + half] = x2 * c + x1 * s;
      }
    }
  }
  return {};
}

namespace {
void softmax_inplace(float* row, int64_t n) {
  float max_value = row[0];
  for (int64_t i = 1; i < n; ++i) max_value = std::max(max_value, row[i]);
  double sum = 0.0;  // f32 running sums lose ~1e-4 relative over a vocabulary-wide row
  for (int64_t i = 0; i < n; ++i) {
    row[i] = std::exp(row[i] - max_value);
    sum += row[i];
  }
  const auto inv = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) row[i] *= inv;
}
}  // namespace

Status softmax(const TensorView& x, const TensorView& out) {
  const int64_t rows = x.dim(0), cols = x.dim(1);
  if (cols == 0) return {};
  if (out.data != x.data) std::copy_n(x.as<const float>(), rows * cols, out.as<float>());
  for (int64_t r = 0; r < rows; ++r) softmax_inplace(out.as<float>() + r * cols, cols);
  return {};
}

Status slice(const TensorView& x, int64_t start, int64_t length, const TensorView& out) {
  const int64_t rows = x.dim(0), cols = x.dim(1);
  for (int64_t r = 0; r < rows; ++r)
    std::copy_n(x.as<const float>() + r * cols + start, length, out.as<float>() + r * length);
  return {};
}

Status kv_append(const TensorView& cache, const TensorView& fresh, int64_t past) {
  const int64_t capacity = cache.dim(0), width = cache.dim(1), seq = fresh.dim(0);
  if (past < 0) return out_of_range(fmt::format("kv_append at negative position {}", past));
  if (past > capacity || seq > capacity - past)
    return out_of_range(fmt::format("kv cache full: {} tokens cached + {} new > capacity {}", past, seq, capacity));
  for (int64_t r = 0; r < seq; ++r)
    convert_from_f32(fresh.as<const float>() + r * width, static_cast<size_t>(width), cache.dtype,
                     cache.row_ptr(past + r));
  return {};
}

Status attention(const TensorView& q, const TensorView& k_cache, const TensorView& v_cache, const OpAttrs& attrs,
                 int64_t past, const TensorView& out) {
  const int64_t seq = q.dim(0), capacity = k_cache.dim(0);
  const int64_t n_heads = attrs.n_heads, head_dim = attrs.head_dim;
  const int64_t group = attrs.n_heads / attrs.n_kv_heads;  // query heads per KV head
  if (past < 0) return out_of_range(fmt::format("attention at negative position {}", past));
  if (past > capacity || seq > capacity - past)
    return out_of_range(
        fmt::format("attention over {} + {} positions exceeds the kv capacity {}", past, seq, capacity));
  const int64_t total = past + seq;
  // Heads are independent: a prefill (or a long decode) splits them over the compute
  // pool, each (row, head) computed as it would be alone, so the bits do not depend on
  // the split. Below ~2^18 multiply-adds the pool's hand-off would cost more than it
  // saves (a short decode) and the caller does it all.
  constexpr int64_t kParallelMacs = int64_t{1} << 18;
  const int64_t macs = seq * total * head_dim * n_heads;
  auto heads = [&](int64_t h_begin, int64_t h_end) {
    std::vector<float> scores(static_cast<size_t>(total));
    std::vector<float> k_scratch, v_scratch;
    for (int64_t h = h_begin; h < h_end; ++h) {
      const int64_t kv_head = h / group;
      for (int64_t i = 0; i < seq; ++i) {
        const int64_t visible = past + i + 1;  // causal: keys [0, past + i]
        const float* qh = q.as<const float>() + i * q.strides[0] + h * head_dim;
        float* oh = out.as<float>() + i * out.strides[0] + h * head_dim;
        if (k_cache.dtype == DType::kF32 && v_cache.dtype == DType::kF32) {
          // f32 caches: the head's keys and values are strided [visible, head_dim] blocks,
          // products too small for BLAS's call overhead (vector_kernels.h).
          scaled_dots(qh, k_cache.as<const float>() + kv_head * head_dim, k_cache.strides[0], visible, head_dim,
                      attrs.scale, scores.data());
          softmax_inplace(scores.data(), visible);
          weighted_rows(scores.data(), v_cache.as<const float>() + kv_head * head_dim, v_cache.strides[0], visible,
                        head_dim, oh);
          continue;
        }
        for (int64_t t = 0; t < visible; ++t) {
          const float* kh = row_as_f32(element_ptr(k_cache, t, kv_head * head_dim), k_cache.dtype, head_dim, k_scratch);
          float dot = 0.0f;
          for (int64_t d = 0; d < head_dim; ++d) dot += qh[d] * kh[d];
          scores[static_cast<size_t>(t)] = dot * attrs.scale;
        }
        softmax_inplace(scores.data(), visible);
        std::fill_n(oh, head_dim, 0.0f);
        for (int64_t t = 0; t < visible; ++t) {
          const float* vh = row_as_f32(element_ptr(v_cache, t, kv_head * head_dim), v_cache.dtype, head_dim, v_scratch);
          const float p = scores[static_cast<size_t>(t)];
          for (int64_t d = 0; d < head_dim; ++d) oh[d] += p * vh[d];
        }
      }
    }
  };
  if (macs >= kParallelMacs) {
    ComputePool::instance().for_ranges(n_heads, 1, heads);
  } else {
    heads(0, n_heads);
  }
  return {};
}

Status rows(const TensorView& x, int64_t start, int64_t length, const TensorView& out) {
  const int64_t total = x.dim(0);
  if (start < 0 || length < 0 || start > total || length > total - start)
    return out_of_range(fmt::format("rows [{}, +{}) of a tensor of {} rows", start, length, total));
  const size_t row_bytes = x.rank() == 1 ? dtype_size(x.dtype) : static_cast<size_t>(x.dim(1)) * dtype_size(x.dtype);
  std::memcpy(out.data, static_cast<const std::byte*>(x.data) + static_cast<size_t>(start) * row_bytes,
              static_cast<size_t>(length) * row_bytes);
  return {};
}

Status concat_rows(const TensorView& a, const TensorView& b, const TensorView& out) {
  std::memcpy(out.data, a.data, a.nbytes());
  std::memcpy(static_cast<std::byte*>(out.data) + a.nbytes(), b.data, b.nbytes());
  return {};
}

Status batched_decode_attention(const TensorView& q, const TensorView& k_new, const TensorView& v_new,
                                const TensorView& positions, std::span<const TensorView* const> caches,
                                const OpAttrs& attrs, const TensorView& out) {
  // Row b of a [B, N] tensor as a [1, N] view.
  auto row = [](const TensorView& x, int64_t b) {
    return TensorView::contiguous(x.row_ptr(b), {1, x.dim(1)}, x.dtype, x.lifetime);
  };
  const auto* pos = positions.as<const int32_t>();
  // Sequences are independent (each has its own caches and output row): split them over
  // the compute pool; the first error by sequence order is the one returned.
  const int64_t batch = q.dim(0);
  std::vector<Status> failed(static_cast<size_t>(batch));
  ComputePool::instance().for_ranges(batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const TensorView& k_cache = *caches[static_cast<size_t>(2 * b)];
      const TensorView& v_cache = *caches[static_cast<size_t>(2 * b + 1)];
      const int64_t past = pos[b];
      Status& status = failed[static_cast<size_t>(b)];
      status = kv_append(k_cache, row(k_new, b), past);
      if (status.ok()) status = kv_append(v_cache, row(v_new, b), past);
      if (status.ok()) status = attention(row(q, b), k_cache, v_cache, attrs, past, row(out, b));
    }
  });
  for (Status& status : failed) DJINN_RETURN_IF_ERROR(std::move(status));
  return {};
}

Result<int64_t> past_of(const TensorView& positions) {
  const int64_t n = positions.dim(0);
  if (n == 0) return int64_t{0};
  const auto* p = positions.as<const int32_t>();
  for (int64_t i = 1; i < n; ++i)
    if (p[i] != p[0] + i)
      return invalid_argument(fmt::format("positions must be consecutive: position {} is {} after {}", i, p[i], p[i - 1]));
  return static_cast<int64_t>(p[0]);
}

Status last_row(const TensorView& x, const TensorView& out) {
  const int64_t rows = x.dim(0), cols = x.dim(1);
  if (rows == 0) return invalid_argument("last_row of an empty tensor");
  std::copy_n(x.as<const float>() + (rows - 1) * cols, cols, out.as<float>());
  return {};
}

Status argmax(const TensorView& x, const TensorView& out) {
  const int64_t rows = x.dim(0), cols = x.dim(1);
  if (cols == 0) return invalid_argument("argmax over an empty row");
  ComputePool::instance().for_ranges(rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = x.as<const float>() + r * cols;
      out.as<int32_t>()[r] = static_cast<int32_t>(argmax_f32(row, cols));
    }
  });
  return {};
}

}  // namespace djinn::cpu
