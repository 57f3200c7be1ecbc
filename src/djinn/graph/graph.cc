#include "djinn/graph/graph.h"

#include <fmt/format.h>

#include <cstring>

#include "djinn/graph/shape_inference.h"

namespace djinn {

const char* phase_name(Phase phase) {
  switch (phase) {
    case Phase::kPrefill: return "prefill";
    case Phase::kDecode: return "decode";
  }
  return "?";
}

ValueId Graph::add_input(std::string name, DType dtype, SymShape shape, LifetimeClass lifetime,
                         std::vector<ValueId>& table) {
  const auto id = static_cast<ValueId>(values_.size());
  hash_cache_.reset();
  depends_on_past_cache_.reset();
  values_.push_back(Value{std::move(name), ValueType{dtype, std::move(shape)}, lifetime, -1});
  table.push_back(id);
  return id;
}

ValueId Graph::add_weight(std::string name, DType dtype, SymShape shape) {
  return add_input(std::move(name), dtype, std::move(shape), LifetimeClass::kWeight, weight_values_);
}
ValueId Graph::add_kv(std::string name, DType dtype, SymShape shape) {
  return add_input(std::move(name), dtype, std::move(shape), LifetimeClass::kKv, kv_values_);
}
ValueId Graph::add_io_input(std::string name, DType dtype, SymShape shape) {
  return add_input(std::move(name), dtype, std::move(shape), LifetimeClass::kIo, io_inputs_);
}

Result<ValueId> Graph::try_add_node(OpKind op, std::vector<ValueId> inputs, const OpAttrs& attrs,
                                    std::string name) {
  std::vector<ValueType> types;
  types.reserve(inputs.size());
  for (ValueId input : inputs) {
    if (input < 0 || static_cast<size_t>(input) >= values_.size())
      return invalid_argument(fmt::format("{}: input value {} does not exist", op_name(op), input));
    types.push_back(values_[static_cast<size_t>(input)].type);
  }
  DJINN_ASSIGN_OR_RETURN(ValueType out_type, infer_output_type(op, attrs, types));
  // Ops that write in place write KV caches only: a weight is shared by every session
  // of its model, and an io input belongs to the caller.
  if (op_has_trait(op, kWritesKv)) {
    const size_t first_written = op == OpKind::kBatchedDecodeAttention ? 4 : 0;
    const size_t last_written = op == OpKind::kBatchedDecodeAttention ? inputs.size() : 1;
    for (size_t i = first_written; i < last_written; ++i)
      if (const Value& v = values_[static_cast<size_t>(inputs[i])]; v.lifetime != LifetimeClass::kKv)
        return invalid_argument(fmt::format("{} writes its input {} ('{}'), which is a {} value, not a KV cache",
                                            op_name(op), i, v.name, lifetime_name(v.lifetime)));
  }
  const auto node_index = static_cast<int32_t>(nodes_.size());
  const auto out = static_cast<ValueId>(values_.size());
  // An aliasing op's output means what its input 0 means (kv_append yields the cache).
  const LifetimeClass lifetime =
      op_has_trait(op, kAliasesInput0) ? values_[static_cast<size_t>(inputs[0])].lifetime : LifetimeClass::kActivation;
  if (name.empty()) name = fmt::format("%{}", out);
  hash_cache_.reset();
  depends_on_past_cache_.reset();
  values_.push_back(Value{std::move(name), std::move(out_type), lifetime, node_index});
  nodes_.push_back(Node{op, std::move(inputs), out, attrs});
  return out;
}

ValueId Graph::add_node(OpKind op, std::vector<ValueId> inputs, const OpAttrs& attrs, std::string name) {
  Result<ValueId> id = try_add_node(op, std::move(inputs), attrs, std::move(name));
  DJINN_CHECK(id.ok(), "{}", id.status().message());
  return *id;
}

void Graph::mark_output(ValueId value) {
  DJINN_CHECK(value >= 0 && static_cast<size_t>(value) < values_.size(), "mark_output: no value {}", value);
  hash_cache_.reset();
  depends_on_past_cache_.reset();
  outputs_.push_back(value);
}

namespace {
// FNV-1a, 64 bit: simple, stable across processes and platforms of one endianness.
class Hasher {
 public:
  void bytes(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) {
      state_ ^= p[i];
      state_ *= 0x100000001b3ull;
    }
  }
  template <typename T>
  void pod(const T& v) {
    bytes(&v, sizeof v);
  }
  uint64_t digest() const { return state_; }

 private:
  uint64_t state_ = 0xcbf29ce484222325ull;
};

void hash_type(Hasher& h, const ValueType& t) {
  h.pod(static_cast<uint8_t>(t.dtype));
  h.pod(static_cast<uint32_t>(t.shape.rank()));
  for (const Dim& d : t.shape.dims) {
    h.pod(static_cast<uint8_t>(d.symbol));
    h.pod(d.value);
  }
}
}  // namespace

bool Graph::activations_depend_on_past() const {
  if (depends_on_past_cache_) return *depends_on_past_cache_;
  bool depends = false;
  for (const Value& v : values_) {
    if (v.lifetime != LifetimeClass::kActivation) continue;
    for (const Dim& d : v.type.shape.dims) depends = depends || d.symbol == Symbol::kPast || d.symbol == Symbol::kTotal;
  }
  depends_on_past_cache_ = depends;
  return depends;
}

uint64_t Graph::structural_hash() const {
  if (hash_cache_) return *hash_cache_;
  Hasher h;
  h.pod(static_cast<uint8_t>(phase_));
  h.pod(static_cast<uint32_t>(values_.size()));
  for (const Value& v : values_) {
    hash_type(h, v.type);
    h.pod(static_cast<uint8_t>(v.lifetime));
    h.pod(v.producer);
  }
  for (const Node& n : nodes_) {
    h.pod(static_cast<uint8_t>(n.op));
    for (ValueId in : n.inputs) h.pod(in);
    h.pod(n.output);
    const OpAttrs& a = n.attrs;
    h.pod(static_cast<uint8_t>(a.transpose_b));
    h.pod(a.eps);
    h.pod(a.start);
    h.pod(a.length);
    h.pod(a.n_heads);
    h.pod(a.n_kv_heads);
    h.pod(a.head_dim);
    h.pod(a.scale);
    h.pod(a.rope_theta);
  }
  for (ValueId out : outputs_) h.pod(out);
  hash_cache_ = h.digest();
  return *hash_cache_;
}

std::string Graph::to_string() const {
  std::string out = fmt::format("graph {} ({} values, {} nodes)\n", phase_name(phase_), values_.size(), nodes_.size());
  for (const Node& n : nodes_) {
    const Value& v = value(n.output);
    std::string args;
    for (size_t i = 0; i < n.inputs.size(); ++i) args += (i ? ", " : "") + value(n.inputs[i]).name;
    out += fmt::format("  {} = {}({}) : {} {}\n", v.name, op_name(n.op), args, dtype_name(v.type.dtype),
                       djinn::to_string(v.type.shape));
  }
  return out;
}

}  // namespace djinn
