#include "djinn/meta/meta_simulator.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <map>

#include "djinn/graph/shape_inference.h"

namespace djinn {
namespace {

constexpr size_t kStackAlignment = 64;       // bytes, every activation
constexpr int64_t kMaxElements = int64_t{1} << 40;  // per value: keeps byte counts far from overflow

int64_t next_power_of_two(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

size_t bytes_of(const ValueType& type, const SymbolBindings& symbols) {
  return static_cast<size_t>(num_elements(type.shape.resolve(symbols))) * dtype_size(type.dtype);
}

double op_flops(const Node& node, const std::vector<Shape>& shapes, const SymbolBindings& symbols) {
  const Shape& out = shapes[static_cast<size_t>(node.output)];
  const double out_elements = static_cast<double>(num_elements(out));
  switch (node.op) {
    case OpKind::kMatMul:
    case OpKind::kMatMulAdd: {
      const double k = static_cast<double>(shapes[static_cast<size_t>(node.inputs[0])][1]);
      return 2.0 * out_elements * k + (node.op == OpKind::kMatMulAdd ? out_elements : 0.0);
    }
    case OpKind::kAttention: {
      const double total = static_cast<double>(symbols.past + symbols.seq);
      return 4.0 * static_cast<double>(out[0]) * total * static_cast<double>(node.attrs.n_heads * node.attrs.head_dim);
    }
    case OpKind::kBatchedDecodeAttention: {  // an upper bound: every session at full capacity
      const double capacity = static_cast<double>(shapes[static_cast<size_t>(node.inputs[4])][0]);
      return 4.0 * static_cast<double>(out[0]) * capacity * static_cast<double>(node.attrs.n_heads * node.attrs.head_dim);
    }
    case OpKind::kLayerNorm:
    case OpKind::kRmsNorm:
    case OpKind::kSoftmax:
    case OpKind::kGeluNew:
    case OpKind::kSilu:
    case OpKind::kSiluMul:
    case OpKind::kRope: return 5.0 * out_elements;
    case OpKind::kAdd:
    case OpKind::kMul:
    case OpKind::kArgmax: return out_elements;
    case OpKind::kEmbedding:
    case OpKind::kSlice:
    case OpKind::kKvAppend:
    case OpKind::kRows:
    case OpKind::kConcatRows:
    case OpKind::kLastRow: return 0.0;
  }
  return 0.0;
}

}  // namespace

PlanKey plan_key(const Graph& graph, const SymbolBindings& symbols) {
  PlanKey key;
  key.graph_hash = graph.structural_hash();
  key.seq_bucket = next_power_of_two(std::max<int64_t>(symbols.seq, 1));
  key.past_bucket = graph.activations_depend_on_past() ? next_power_of_two(std::max<int64_t>(symbols.past, 1)) : 0;
  return key;
}

Result<Plan> simulate(const Graph& graph, const SymbolBindings& symbols) {
  const auto start = std::chrono::steady_clock::now();
  Plan plan;
  plan.key = plan_key(graph, symbols);
  // Simulate at the bucket's upper bounds so the frame fits every step in the bucket.
  SymbolBindings at_bucket = symbols;
  at_bucket.seq = plan.key.seq_bucket;
  if (plan.key.past_bucket > 0) at_bucket.past = plan.key.past_bucket;

  const auto& values = graph.values();
  const size_t n_values = values.size();
  plan.value_types.reserve(n_values);
  plan.value_lifetimes.reserve(n_values);
  plan.placements.resize(n_values);
  std::vector<Shape> shapes(n_values);
  for (size_t i = 0; i < n_values; ++i) {
    plan.value_types.push_back(values[i].type);
    plan.value_lifetimes.push_back(values[i].lifetime);
    shapes[i] = values[i].type.shape.resolve(at_bucket);
    int64_t elements = 1;
    for (int64_t d : shapes[i])
      if (d < 0 || __builtin_mul_overflow(elements, d, &elements) || elements > kMaxElements)
        return invalid_argument(fmt::format("value '{}' of shape {} is too large to plan", values[i].name,
                                            to_string(values[i].type.shape)));
  }
  auto place_table = [&](const std::vector<ValueId>& table, Placement kind) {
    for (size_t i = 0; i < table.size(); ++i)
      plan.placements[static_cast<size_t>(table[i])] = ValuePlacement{kind, static_cast<int32_t>(i), 0, 0};
  };
  place_table(graph.weight_values(), Placement::kWeight);
  place_table(graph.kv_values(), Placement::kKv);
  place_table(graph.io_inputs(), Placement::kIo);
  plan.n_weights = graph.weight_values().size();
  plan.n_kv = graph.kv_values().size();
  plan.n_io = graph.io_inputs().size();

  // 1. Validate every node and find each stack value's last use.
  const auto& nodes = graph.nodes();
  std::vector<int64_t> last_use(n_values, -1);
  std::vector<ValueType> input_types;
  for (size_t step = 0; step < nodes.size(); ++step) {
    const Node& node = nodes[step];
    input_types.clear();
    for (ValueId in : node.inputs) {
      if (in < 0 || static_cast<size_t>(in) >= n_values)
        return invalid_argument(fmt::format("node {} ({}) reads value {} that does not exist", step, op_name(node.op), in));
      const Value& v = values[static_cast<size_t>(in)];
      if (v.producer >= static_cast<int32_t>(step))
        return invalid_argument(fmt::format("node {} ({}) reads '{}' before it is computed (a cycle or bad order)", step,
                                            op_name(node.op), v.name));
      input_types.push_back(v.type);
      last_use[static_cast<size_t>(in)] = static_cast<int64_t>(step);
    }
    Result<ValueType> inferred = infer_output_type(node.op, node.attrs, input_types);
    if (!inferred.ok()) return Status(inferred.status().code(), fmt::format("node {}: {}", step, inferred.status().message()));
    if (node.output < 0 || static_cast<size_t>(node.output) >= n_values || !(*inferred == values[static_cast<size_t>(node.output)].type))
      return invalid_argument(fmt::format("node {} ({}): its output value disagrees with shape inference", step, op_name(node.op)));
  }
  for (ValueId out : graph.outputs()) last_use[static_cast<size_t>(out)] = static_cast<int64_t>(nodes.size());

  // 2. Place activations: first fit among the blocks live at each step.
  std::map<size_t, std::pair<size_t, ValueId>> live;  // offset -> (bytes, value)
  for (size_t step = 0; step < nodes.size(); ++step) {
    const Node& node = nodes[step];
    // Free blocks whose last use is before this step (inputs of this step stay live
    // until it is done: kernels read inputs while writing the output).
    for (auto it = live.begin(); it != live.end();) {
      if (last_use[static_cast<size_t>(it->second.second)] < static_cast<int64_t>(step))
        it = live.erase(it);
      else
        ++it;
    }
    const auto out = static_cast<size_t>(node.output);
    PlanStep plan_step{node.op, node.attrs, node.output, static_cast<uint32_t>(plan.step_inputs.size()),
                       static_cast<uint32_t>(node.inputs.size())};
    plan.step_inputs.insert(plan.step_inputs.end(), node.inputs.begin(), node.inputs.end());
    plan.steps.push_back(plan_step);
    size_t in_bytes = 0;
    for (ValueId in : node.inputs) in_bytes += bytes_of(values[static_cast<size_t>(in)].type, at_bucket);
    if (op_has_trait(node.op, kWritesKv)) {  // kv_append: new rows in input 1; batched: K and V rows in 1 and 2
      plan.kv_bytes_appended += bytes_of(values[static_cast<size_t>(node.inputs[1])].type, at_bucket);
      if (node.op == OpKind::kBatchedDecodeAttention)
        plan.kv_bytes_appended += bytes_of(values[static_cast<size_t>(node.inputs[2])].type, at_bucket);
    }
    plan.flops += op_flops(node, shapes, at_bucket);

    if (op_has_trait(node.op, kAliasesInput0)) {
      plan.placements[out] = ValuePlacement{Placement::kAlias, node.inputs[0], 0, 0};
      plan.bytes_moved += static_cast<double>(in_bytes);
      continue;
    }
    const size_t bytes = (bytes_of(values[out].type, at_bucket) + kStackAlignment - 1) / kStackAlignment * kStackAlignment;
    plan.bytes_moved += static_cast<double>(in_bytes + bytes);
    size_t offset = 0;
    for (const auto& [block_offset, block] : live) {
      if (block_offset >= offset + bytes) break;  // the gap before this block fits
      offset = std::max(offset, block_offset + block.first);
    }
    live.emplace(offset, std::make_pair(bytes, node.output));
    plan.placements[out] = ValuePlacement{Placement::kStack, -1, offset, bytes};
    plan.stack_peak_bytes = std::max(plan.stack_peak_bytes, offset + bytes);
  }
  plan.outputs = graph.outputs();
  plan.build_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
  return plan;
}

}  // namespace djinn
