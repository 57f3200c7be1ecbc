#include "djinn/graph/shape_inference.h"

#include <fmt/format.h>

namespace djinn {
namespace {

Status mismatch(OpKind op, std::span<const ValueType> inputs, std::string_view what) {
  std::string shapes;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (i) shapes += ", ";
    shapes += fmt::format("{} {}", dtype_name(inputs[i].dtype), to_string(inputs[i].shape));
  }
  return invalid_argument(fmt::format("{}: {} (inputs: {})", op_name(op), what, shapes));
}

bool is_matrix(const ValueType& t) { return t.shape.rank() == 2; }
bool is_vector(const ValueType& t) { return t.shape.rank() == 1; }
bool is_positions(const ValueType& t, const Dim& rows) {
  return is_vector(t) && t.dtype == DType::kI32 && t.shape[0] == rows;
}

}  // namespace

Result<ValueType> infer_output_type(OpKind op, const OpAttrs& attrs, std::span<const ValueType> in) {
  if (op_arity(op) >= 0 && static_cast<int>(in.size()) != op_arity(op))
    return mismatch(op, in, fmt::format("takes {} inputs, got {}", op_arity(op), in.size()));
  auto float_matrix = [](const ValueType& t) { return is_matrix(t) && is_floating(t.dtype); };

  switch (op) {
    case OpKind::kEmbedding:
      if (!float_matrix(in[0]) || !is_vector(in[1]) || in[1].dtype != DType::kI32)
        return mismatch(op, in, "needs table[V, H] and i32 ids[rows]");
      return ValueType{DType::kF32, {in[1].shape[0], in[0].shape[1]}};
    case OpKind::kMatMul:
    case OpKind::kMatMulAdd: {
      if (!float_matrix(in[0]) || !float_matrix(in[1])) return mismatch(op, in, "needs two matrices");
      const Dim k_w = attrs.transpose_b ? in[1].shape[1] : in[1].shape[0];
      const Dim n_w = attrs.transpose_b ? in[1].shape[0] : in[1].shape[1];
      if (!(in[0].shape[1] == k_w)) return mismatch(op, in, "inner dimensions differ");
      ValueType product{DType::kF32, {in[0].shape[0], n_w}};
      if (op == OpKind::kMatMulAdd && !(in[2] == product))
        return mismatch(op, in, "the residual must be f32 of the product's shape");
      return product;
    }
    case OpKind::kAdd:
    case OpKind::kMul: {
      if (!float_matrix(in[0]) || !is_floating(in[1].dtype)) return mismatch(op, in, "needs a float matrix");
      const bool same = in[0].shape == in[1].shape;
      const bool row_broadcast = op == OpKind::kAdd && is_vector(in[1]) && in[1].shape[0] == in[0].shape[1];
      if (!same && !row_broadcast) return mismatch(op, in, "shapes do not broadcast");
      return ValueType{DType::kF32, in[0].shape};
    }
    case OpKind::kSiluMul:
      if (!float_matrix(in[0]) || in[1].dtype != DType::kF32 || !(in[0].shape == in[1].shape))
        return mismatch(op, in, "needs two f32 matrices of one shape");
      return ValueType{DType::kF32, in[0].shape};
    case OpKind::kLayerNorm:
    case OpKind::kRmsNorm: {
      if (!float_matrix(in[0])) return mismatch(op, in, "needs x[rows, H]");
      for (size_t i = 1; i < in.size(); ++i)
        if (!is_vector(in[i]) || !(in[i].shape[0] == in[0].shape[1]))
          return mismatch(op, in, "norm parameters must be [H]");
      if (!(attrs.eps > 0.0f)) return mismatch(op, in, "eps must be > 0");
      return ValueType{DType::kF32, in[0].shape};
    }
    case OpKind::kGeluNew:
    case OpKind::kSilu:
    case OpKind::kSoftmax:
      if (!float_matrix(in[0])) return mismatch(op, in, "needs a float matrix");
      return ValueType{DType::kF32, in[0].shape};
    case OpKind::kRope: {
      if (!float_matrix(in[0]) || !is_vector(in[1]) || in[1].dtype != DType::kI32 ||
          !(in[1].shape[0] == in[0].shape[0]))
        return mismatch(op, in, "needs x[rows, W] and i32 positions[rows]");
      if (attrs.head_dim <= 0 || attrs.head_dim % 2 != 0 || attrs.head_dim > (int64_t{1} << 20) || !(attrs.rope_theta > 0.0f))
        return mismatch(op, in, "needs an even head_dim > 0 and rope_theta > 0");
      const Dim width = in[0].shape[1];
      if (!width.is_symbolic() && width.value % attrs.head_dim != 0)
        return mismatch(op, in, "width is not a multiple of head_dim");
      return ValueType{DType::kF32, in[0].shape};
    }
    case OpKind::kSlice: {
      if (!float_matrix(in[0]) || in[0].shape[1].is_symbolic()) return mismatch(op, in, "needs x[rows, N]");
      if (attrs.start < 0 || attrs.length <= 0 || attrs.start > in[0].shape[1].value ||
          attrs.length > in[0].shape[1].value - attrs.start)
        return mismatch(op, in, fmt::format("columns [{}, {}) out of range", attrs.start, attrs.start + attrs.length));
      return ValueType{DType::kF32, {in[0].shape[0], attrs.length}};
    }
    case OpKind::kKvAppend:
      if (!float_matrix(in[0]) || !float_matrix(in[1]) || !(in[0].shape[1] == in[1].shape[1]))
        return mismatch(op, in, "needs cache[capacity, W] and new[seq, W]");
      if (!is_positions(in[2], in[1].shape[0])) return mismatch(op, in, "needs i32 positions[seq]");
      return in[0];
    case OpKind::kAttention: {
      if (!float_matrix(in[0]) || !float_matrix(in[1]) || !float_matrix(in[2]) || !(in[1].shape == in[2].shape))
        return mismatch(op, in, "needs q[seq, Hq], k_cache[capacity, Hkv], v_cache[capacity, Hkv]");
      if (!is_positions(in[3], in[0].shape[0])) return mismatch(op, in, "needs i32 positions[seq]");
      const int64_t nh = attrs.n_heads, nkv = attrs.n_kv_heads, hd = attrs.head_dim;
      constexpr int64_t kMaxHeadsOrDim = int64_t{1} << 20;  // keeps nh * hd far from overflow
      if (nh <= 0 || nkv <= 0 || hd <= 0 || nh % nkv != 0 || nh > kMaxHeadsOrDim || hd > kMaxHeadsOrDim)
        return mismatch(op, in, fmt::format("bad heads: n_heads={} n_kv_heads={} head_dim={}", nh, nkv, hd));
      if (!(in[0].shape[1] == Dim(nh * hd)) || !(in[1].shape[1] == Dim(nkv * hd)))
        return mismatch(op, in, "widths disagree with heads x head_dim");
      return ValueType{DType::kF32, in[0].shape};
    }
    case OpKind::kBatchedDecodeAttention: {
      if (in.size() < 6 || in.size() % 2 != 0)
        return mismatch(op, in, "takes q, k_new, v_new, positions and a K / V cache pair per session");
      if (!float_matrix(in[0]) || !float_matrix(in[1]) || !float_matrix(in[2]) || !(in[1].shape == in[2].shape) ||
          in[0].shape[0].is_symbolic() || !(in[1].shape[0] == in[0].shape[0]))
        return mismatch(op, in, "needs q[B, Hq], k_new[B, Hkv], v_new[B, Hkv] with a constant batch B");
      if (!is_positions(in[3], in[0].shape[0])) return mismatch(op, in, "needs i32 positions[B]");
      const auto sessions = static_cast<int64_t>(in.size() - 4) / 2;
      if (in[0].shape[0].value != sessions)
        return mismatch(op, in, fmt::format("{} cache pairs for a batch of {}", sessions, in[0].shape[0].value));
      for (size_t i = 4; i < in.size(); ++i)
        if (!float_matrix(in[i]) || in[i].dtype != in[4].dtype || !(in[i].shape == in[4].shape) ||
            !(in[i].shape[1] == in[1].shape[1]))
          return mismatch(op, in, "every cache must be [capacity, Hkv] of one dtype and shape");
      const int64_t nh = attrs.n_heads, nkv = attrs.n_kv_heads, hd = attrs.head_dim;
      constexpr int64_t kMaxHeadsOrDim = int64_t{1} << 20;
      if (nh <= 0 || nkv <= 0 || hd <= 0 || nh % nkv != 0 || nh > kMaxHeadsOrDim || hd > kMaxHeadsOrDim)
        return mismatch(op, in, fmt::format("bad heads: n_heads={} n_kv_heads={} head_dim={}", nh, nkv, hd));
      if (!(in[0].shape[1] == Dim(nh * hd)) || !(in[1].shape[1] == Dim(nkv * hd)))
        return mismatch(op, in, "widths disagree with heads x head_dim");
      return ValueType{DType::kF32, in[0].shape};
    }
    case OpKind::kRows: {
      if (!is_matrix(in[0]) && !is_vector(in[0])) return mismatch(op, in, "needs x[R, N] or x[R]");
      if (attrs.start < 0 || attrs.length <= 0 || (!in[0].shape[0].is_symbolic() &&
                                                   (attrs.start > in[0].shape[0].value ||
                                                    attrs.length > in[0].shape[0].value - attrs.start)))
        return mismatch(op, in, fmt::format("rows [{}, +{}) out of range", attrs.start, attrs.length));
      if (is_vector(in[0])) return ValueType{in[0].dtype, {attrs.length}};
      return ValueType{in[0].dtype, {attrs.length, in[0].shape[1]}};
    }
    case OpKind::kConcatRows: {
      if (!is_matrix(in[0]) || !is_matrix(in[1]) || in[0].dtype != in[1].dtype || !(in[0].shape[1] == in[1].shape[1]) ||
          in[0].shape[0].is_symbolic() || in[1].shape[0].is_symbolic() || in[0].shape[0].value > (int64_t{1} << 40) ||
          in[1].shape[0].value > (int64_t{1} << 40))
        return mismatch(op, in, "needs a[Ra, N] and b[Rb, N] of one dtype, constant rows");
      return ValueType{in[0].dtype, {in[0].shape[0].value + in[1].shape[0].value, in[0].shape[1]}};
    }
    case OpKind::kLastRow:
      if (!float_matrix(in[0])) return mismatch(op, in, "needs a float matrix");
      return ValueType{DType::kF32, {Dim(1), in[0].shape[1]}};
    case OpKind::kArgmax:
      if (!float_matrix(in[0])) return mismatch(op, in, "needs a float matrix");
      return ValueType{DType::kI32, {in[0].shape[0]}};
  }
  return mismatch(op, in, "unknown op");
}

}  // namespace djinn
