#include "djinn/rpc/graph_codec.h"

#include <fmt/format.h>

namespace djinn::rpc {
namespace {

void dims_to_proto(const SymShape& shape, google::protobuf::RepeatedPtrField<DimDef>& out) {
  for (const Dim& d : shape.dims) {
    DimDef* dim = out.Add();
    dim->set_symbol(symbol_name(d.symbol));
    dim->set_value(d.value);
  }
}

Result<SymShape> dims_from_proto(const google::protobuf::RepeatedPtrField<DimDef>& dims, size_t input) {
  if (dims.size() > 8) return invalid_argument(fmt::format("graph input {}: rank {} is over 8", input, dims.size()));
  SymShape shape;
  for (const DimDef& d : dims) {
    if (d.symbol().empty()) {
      if (d.value() < 0 || d.value() > (int64_t{1} << 40))
        return invalid_argument(fmt::format("graph input {}: dimension {} is out of range", input, d.value()));
      shape.dims.emplace_back(d.value());
      continue;
    }
    bool known = false;
    for (Symbol s : {Symbol::kSeq, Symbol::kPast, Symbol::kTotal})
      if (d.symbol() == symbol_name(s)) {
        shape.dims.emplace_back(s);
        known = true;
      }
    if (!known) return invalid_argument(fmt::format("graph input {}: unknown symbol '{}'", input, d.symbol()));
  }
  return shape;
}

}  // namespace

void graph_to_proto(const Graph& graph, GraphDef& out) {
  out.Clear();
  out.set_phase(phase_name(graph.phase()));
  for (size_t id = 0; id < graph.values().size(); ++id) {
    const Value& v = graph.values()[id];
    if (v.producer >= 0) continue;
    ValueDef* def = out.add_inputs();
    def->set_position(static_cast<int32_t>(id));
    def->set_name(v.name);
    def->set_dtype(std::string(dtype_name(v.type.dtype)));
    def->set_lifetime(lifetime_name(v.lifetime));
    dims_to_proto(v.type.shape, *def->mutable_shape());
  }
  for (const Node& n : graph.nodes()) {
    NodeDef* def = out.add_nodes();
    def->set_op(std::string(op_name(n.op)));
    for (ValueId in : n.inputs) def->add_inputs(in);
    AttrsDef* a = def->mutable_attrs();
    a->set_transpose_b(n.attrs.transpose_b);
    a->set_eps(n.attrs.eps);
    a->set_start(n.attrs.start);
    a->set_length(n.attrs.length);
    a->set_n_heads(n.attrs.n_heads);
    a->set_n_kv_heads(n.attrs.n_kv_heads);
    a->set_head_dim(n.attrs.head_dim);
    a->set_scale(n.attrs.scale);
    a->set_rope_theta(n.attrs.rope_theta);
  }
  for (ValueId o : graph.outputs()) out.add_outputs(o);
}

Result<Graph> graph_from_proto(const GraphDef& def, const GraphLimits& limits) {
  if (static_cast<size_t>(def.nodes_size()) > limits.max_nodes || static_cast<size_t>(def.inputs_size()) > limits.max_inputs)
    return out_of_range(fmt::format("graph of {} inputs and {} nodes is over the limit", def.inputs_size(), def.nodes_size()));
  Phase phase;
  if (def.phase() == "prefill")
    phase = Phase::kPrefill;
  else if (def.phase() == "decode")
    phase = Phase::kDecode;
  else
    return invalid_argument(fmt::format("unknown graph phase '{}'", def.phase()));
  Graph graph(phase);
  auto add_input = [&](int i) -> Status {
    const ValueDef& v = def.inputs(i);
    const std::optional<DType> dtype = parse_dtype(v.dtype());
    if (!dtype) return invalid_argument(fmt::format("graph input {}: unknown dtype '{}'", i, v.dtype()));
    DJINN_ASSIGN_OR_RETURN(SymShape shape, dims_from_proto(v.shape(), static_cast<size_t>(i)));
    if (v.lifetime() == "weight")
      graph.add_weight(v.name(), *dtype, std::move(shape));
    else if (v.lifetime() == "kv")
      graph.add_kv(v.name(), *dtype, std::move(shape));
    else if (v.lifetime() == "io")
      graph.add_io_input(v.name(), *dtype, std::move(shape));
    else
      return invalid_argument(fmt::format("graph input {}: unknown lifetime '{}'", i, v.lifetime()));
    return {};
  };
  auto add_node = [&](int i) -> Status {
    const NodeDef& n = def.nodes(i);
    const std::optional<OpKind> op = parse_op(n.op());
    if (!op) return invalid_argument(fmt::format("node {}: unknown op '{}'", i, n.op()));
    const auto defined = static_cast<int32_t>(graph.values().size());
    std::vector<ValueId> inputs;
    for (int32_t in : n.inputs()) {
      if (in < 0 || in >= defined)
        return invalid_argument(fmt::format(
            "node {} ({}) reads value {}, which is not defined before it (graphs may not have cycles)", i, n.op(), in));
      inputs.push_back(in);
    }
    const AttrsDef& a = n.attrs();
    const OpAttrs attrs{.transpose_b = a.transpose_b(), .eps = a.eps(), .start = a.start(), .length = a.length(),
                        .n_heads = a.n_heads(), .n_kv_heads = a.n_kv_heads(), .head_dim = a.head_dim(),
                        .scale = a.scale(), .rope_theta = a.rope_theta()};
    Result<ValueId> added = graph.try_add_node(*op, std::move(inputs), attrs);
    if (!added.ok()) return invalid_argument(fmt::format("node {}: {}", i, added.status().message()));
    return {};
  };
  // Replay declarations in value-id order: an input goes in as soon as its position is reached.
  int next_input = 0, next_node = 0;
  while (next_input < def.inputs_size() || next_node < def.nodes_size()) {
    const bool input_due = next_input < def.inputs_size() &&
                           (next_node >= def.nodes_size() ||
                            def.inputs(next_input).position() <= static_cast<int32_t>(graph.values().size()));
    if (input_due) {
      DJINN_RETURN_IF_ERROR(add_input(next_input++));
    } else {
      DJINN_RETURN_IF_ERROR(add_node(next_node++));
    }
  }
  for (int32_t o : def.outputs()) {
    if (o < 0 || static_cast<size_t>(o) >= graph.values().size())
      return invalid_argument(fmt::format("graph output {} does not exist", o));
    graph.mark_output(o);
  }
  if (graph.outputs().empty()) return invalid_argument("the graph has no outputs");
  return graph;
}

}  // namespace djinn::rpc
