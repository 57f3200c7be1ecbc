// Interpreter: direct execution of a Graph, node by node, on a Backend. No plan, no
// VMU: every activation gets its own backend allocation for the duration of one
// run. It is the reference the planned executor is compared against, bit for bit.
//
// Threads: one run() at a time per Interpreter.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "djinn/backend/backend.h"
#include "djinn/core/status.h"
#include "djinn/core/tensor.h"
#include "djinn/graph/graph.h"

namespace djinn {

// What a graph's inputs are bound to for one run. Each span is parallel to the
// graph's table of the same name; every view's shape and dtype must match the
// value's type resolved under `symbols`.
struct GraphBindings {
  std::span<const TensorView> weights;    // graph.weight_values()
  std::span<const TensorView> kv;         // graph.kv_values()
  std::span<const TensorView> io_inputs;  // graph.io_inputs()
  SymbolBindings symbols;
  // Optional identities of the weight and KV tables (see Note [Cheap rebinding] in
  // executor.h): non-zero ids promise that a table with the same id has the same
  // views as the last time it was bound, so the executor need not look at it again.
  // 0: unknown, always rebind.
  uint64_t weights_id = 0;
  uint64_t kv_id = 0;
};

// A process-wide unique, non-zero id for a binding table.
uint64_t next_binding_id();

// Checks that `bindings` fits `graph` (counts, dtypes, resolved shapes).
Status validate_bindings(const Graph& graph, const GraphBindings& bindings);

class Interpreter {
 public:
  explicit Interpreter(Backend& backend) : backend_(backend) {}
  ~Interpreter();
  Interpreter(const Interpreter&) = delete;
  Interpreter& operator=(const Interpreter&) = delete;

  // Runs every node in order. Returns views of graph.outputs(), valid until the
  // next run() or the Interpreter's destruction.
  Result<std::vector<TensorView>> run(const Graph& graph, const GraphBindings& bindings);

 private:
  void release_activations();

  Backend& backend_;
  std::vector<void*> activations_;  // backend allocations of the last run
};

}  // namespace djinn
