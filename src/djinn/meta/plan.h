// Plan: what the meta-simulator learned about a graph at one shape bucket, in the
// form the executor runs: every value's placement, the step list, and the memory and
// work estimates. A Plan is immutable and shared (PlanCache hands out shared_ptrs).
//
// Validity: a plan built for bucket (seq_bucket, past_bucket) runs any step with
// seq <= seq_bucket (and past <= past_bucket when the graph's activations depend on
// past): activation sizes only grow with seq, so the stack offsets, computed at the
// bucket, leave room; kernels take the exact seq / past at run time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "djinn/graph/graph.h"

namespace djinn {

enum class Placement : uint8_t {
  kWeight,  // index: into graph.weight_values() / the bound weights
  kKv,      // index: KV slot
  kIo,      // index: into graph.io_inputs()
  kStack,   // offset: bytes from the step's stack frame base
  kAlias,   // index: the value whose memory this one is (kv_append's output)
};

struct ValuePlacement {
  Placement kind = Placement::kStack;
  int32_t index = -1;
  size_t offset = 0;  // kStack only
  size_t bytes = 0;   // kStack: bytes reserved at the bucket
};

struct PlanStep {
  OpKind op;
  OpAttrs attrs;
  ValueId output;
  uint32_t first_input;  // into Plan::step_inputs
  uint32_t input_count;
};

struct PlanKey {
  uint64_t graph_hash = 0;
  int64_t seq_bucket = 0;
  int64_t past_bucket = 0;  // 0 unless activations depend on past
  friend bool operator==(const PlanKey&, const PlanKey&) = default;
};

struct Plan {
  PlanKey key;
  std::vector<ValueType> value_types;         // per value, symbolic (resolved per step)
  std::vector<LifetimeClass> value_lifetimes;
  std::vector<ValuePlacement> placements;     // per value
  std::vector<PlanStep> steps;                // in execution order
  std::vector<ValueId> step_inputs;
  std::vector<ValueId> outputs;
  size_t n_weights = 0, n_kv = 0, n_io = 0;

  // Estimates at the bucket (seq = seq_bucket, past as simulated).
  size_t stack_peak_bytes = 0;    // the frame a step needs
  size_t kv_bytes_appended = 0;   // KV bytes one step writes
  double flops = 0;               // multiply-adds count 2
  double bytes_moved = 0;         // every op's inputs read + outputs written
  double build_us = 0;            // time the meta-simulation took
};

}  // namespace djinn
