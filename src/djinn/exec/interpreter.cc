#include "djinn/exec/interpreter.h"

#include <fmt/format.h>

#include <atomic>

namespace djinn {
namespace {

constexpr size_t kActivationAlignment = 64;  // bytes

Status check_binding(const Value& value, const TensorView& view, const SymbolBindings& symbols) {
  const Shape expected = value.type.shape.resolve(symbols);
  if (view.dtype != value.type.dtype || view.shape != expected)
    return invalid_argument(fmt::format("input '{}' is bound to {} {}, the graph needs {} {}", value.name,
                                        dtype_name(view.dtype), to_string(view.shape), dtype_name(value.type.dtype),
                                        to_string(expected)));
  if (view.data == nullptr && view.numel() > 0) return invalid_argument(fmt::format("input '{}' is bound to null", value.name));
  return {};
}

Status check_table(const Graph& graph, const std::vector<ValueId>& table, std::span<const TensorView> views,
                   const SymbolBindings& symbols, const char* what) {
  if (views.size() != table.size())
    return invalid_argument(fmt::format("graph has {} {} inputs, {} bound", table.size(), what, views.size()));
  for (size_t i = 0; i < table.size(); ++i) DJINN_RETURN_IF_ERROR(check_binding(graph.value(table[i]), views[i], symbols));
  return {};
}

}  // namespace

uint64_t next_binding_id() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

Status validate_bindings(const Graph& graph, const GraphBindings& b) {
  if (b.symbols.seq < 0 || b.symbols.past < 0)
    return invalid_argument(fmt::format("bad symbols seq={} past={}", b.symbols.seq, b.symbols.past));
  DJINN_RETURN_IF_ERROR(check_table(graph, graph.weight_values(), b.weights, b.symbols, "weight"));
  DJINN_RETURN_IF_ERROR(check_table(graph, graph.kv_values(), b.kv, b.symbols, "kv"));
  DJINN_RETURN_IF_ERROR(check_table(graph, graph.io_inputs(), b.io_inputs, b.symbols, "io"));
  return {};
}

Interpreter::~Interpreter() { release_activations(); }

void Interpreter::release_activations() {
  for (void* p : activations_) backend_.deallocate(p);
  activations_.clear();
}

Result<std::vector<TensorView>> Interpreter::run(const Graph& graph, const GraphBindings& bindings) {
  DJINN_RETURN_IF_ERROR(validate_bindings(graph, bindings));
  release_activations();
  std::vector<TensorView> views(graph.values().size());
  auto bind_table = [&](const std::vector<ValueId>& table, std::span<const TensorView> bound) {
    for (size_t i = 0; i < table.size(); ++i) views[static_cast<size_t>(table[i])] = bound[i];
  };
  bind_table(graph.weight_values(), bindings.weights);
  bind_table(graph.kv_values(), bindings.kv);
  bind_table(graph.io_inputs(), bindings.io_inputs);
  if (!backend_.host_addressable()) {  // io inputs are host memory: upload copies
    for (size_t i = 0; i < graph.io_inputs().size(); ++i) {
      TensorView& view = views[static_cast<size_t>(graph.io_inputs()[i])];
      void* device = backend_.allocate(std::max<size_t>(view.nbytes(), 1), kActivationAlignment);
      if (device == nullptr) return out_of_memory(fmt::format("interpreter: {} bytes for io input {}", view.nbytes(), i));
      activations_.push_back(device);
      DJINN_RETURN_IF_ERROR(backend_.upload(device, view.data, view.nbytes()));
      view.data = device;
    }
  }

  std::vector<const TensorView*> inputs;
  for (const Node& node : graph.nodes()) {
    inputs.clear();
    for (ValueId in : node.inputs) inputs.push_back(&views[static_cast<size_t>(in)]);
    const Value& out_value = graph.value(node.output);
    TensorView out;
    if (op_has_trait(node.op, kAliasesInput0)) {
      out = *inputs[0];
    } else {
      out = TensorView::contiguous(nullptr, out_value.type.shape.resolve(bindings.symbols), out_value.type.dtype,
                                   out_value.lifetime);
      out.data = backend_.allocate(std::max<size_t>(out.nbytes(), 1), kActivationAlignment);
      if (out.data == nullptr)
        return out_of_memory(fmt::format("interpreter: {} bytes for '{}'", out.nbytes(), out_value.name));
      activations_.push_back(out.data);
    }
    const Status status = backend_.run_op(node.op, node.attrs, inputs, out, bindings.symbols);
    if (!status.ok()) {
      (void)backend_.synchronize();
      return Status(status.code(), fmt::format("{} ({} '{}')", status.message(), op_name(node.op), out_value.name));
    }
    views[static_cast<size_t>(node.output)] = out;
  }
  DJINN_RETURN_IF_ERROR(backend_.synchronize());
  std::vector<TensorView> outputs;
  for (ValueId id : graph.outputs()) outputs.push_back(views[static_cast<size_t>(id)]);
  return outputs;
}

}  // namespace djinn
