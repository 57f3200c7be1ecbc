// The SRG ("semantically rich graph"): a straight-line dataflow graph of ops whose
// values know what they mean (lifetime class) and whose graph knows its phase.
//
// Invariants (kept by construction: values can only be used after they exist):
//  - nodes are in a valid execution order: every input of node i is a graph input
//    (weight, kv, io) or the output of a node j < i;
//  - every node's output shape and dtype come from shape inference (shape_inference.h);
//  - shapes may name the symbols seq / past / total, bound per step (core/shape.h).
//
// Binding tables: weight_values(), kv_values(), io_inputs() and outputs() list value
// ids in declaration order. The executor binds weights by name once per model, the KV
// cache by slot (kv_values()[slot]), step inputs by position in io_inputs().
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "djinn/core/dtype.h"
#include "djinn/core/lifetime.h"
#include "djinn/core/shape.h"
#include "djinn/core/status.h"
#include "djinn/graph/op.h"

namespace djinn {

enum class Phase : uint8_t { kPrefill, kDecode };
const char* phase_name(Phase phase);

using ValueId = int32_t;

struct ValueType {
  DType dtype = DType::kF32;
  SymShape shape;
  friend bool operator==(const ValueType&, const ValueType&) = default;
};

struct Value {
  std::string name;  // weights: the checkpoint tensor name; others: for diagnostics
  ValueType type;
  LifetimeClass lifetime = LifetimeClass::kActivation;
  int32_t producer = -1;  // index of the producing node, -1 for graph inputs
};

struct Node {
  OpKind op;
  std::vector<ValueId> inputs;
  ValueId output = -1;
  OpAttrs attrs;
};

class Graph {
 public:
  explicit Graph(Phase phase) : phase_(phase) {}

  Phase phase() const { return phase_; }

  // Graph inputs.
  ValueId add_weight(std::string name, DType dtype, SymShape shape);
  ValueId add_kv(std::string name, DType dtype, SymShape shape);
  ValueId add_io_input(std::string name, DType dtype, SymShape shape);
  // Adds a node; infers its output type. Throws CheckError when the inputs do not
  // fit the op (a builder bug or a bad config); try_add_node returns the Status.
  ValueId add_node(OpKind op, std::vector<ValueId> inputs, const OpAttrs& attrs = {}, std::string name = {});
  Result<ValueId> try_add_node(OpKind op, std::vector<ValueId> inputs, const OpAttrs& attrs = {},
                               std::string name = {});
  void mark_output(ValueId value);

  const std::vector<Value>& values() const { return values_; }
  const std::vector<Node>& nodes() const { return nodes_; }
  const Value& value(ValueId id) const { return values_.at(static_cast<size_t>(id)); }
  const std::vector<ValueId>& weight_values() const { return weight_values_; }
  const std::vector<ValueId>& kv_values() const { return kv_values_; }
  const std::vector<ValueId>& io_inputs() const { return io_inputs_; }
  const std::vector<ValueId>& outputs() const { return outputs_; }

  // 64-bit hash of the structure: phase, every value's dtype / symbolic shape /
  // lifetime, every node's op / inputs / attributes, and the outputs. Names do not
  // count. Equal graphs built by the same builder hash equal across processes.
  // Computed once and cached (adding nodes or inputs resets the cache).
  uint64_t structural_hash() const;
  // Whether any activation's shape names past or total (then plans bucket on past too).
  bool activations_depend_on_past() const;

  // Human-readable listing, one line per node.
  std::string to_string() const;

 private:
  ValueId add_input(std::string name, DType dtype, SymShape shape, LifetimeClass lifetime,
                    std::vector<ValueId>& table);

  Phase phase_;
  std::vector<Value> values_;
  std::vector<Node> nodes_;
  std::vector<ValueId> weight_values_;
  std::vector<ValueId> kv_values_;
  std::vector<ValueId> io_inputs_;
  std::vector<ValueId> outputs_;
  mutable std::optional<uint64_t> hash_cache_;          // structural_hash()
  mutable std::optional<bool> depends_on_past_cache_;    // activations_depend_on_past()
};

}  // namespace djinn
