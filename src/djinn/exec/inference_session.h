// InferenceSession: one sequence running on one model — its KV cache, the step
// graphs of its model (built once per phase and reused), and greedy generation.
//
// KV cache: one [capacity, n_kv_heads * head_dim] tensor per layer for K and one
// for V, in the model's dtype, in the graph's KV slot order. `length()` tokens are
// cached; a forward of n tokens fills rows [length, length + n).
//
// Threads: one call at a time per session; sessions of one model may run on
// different threads if each has its own Backend.
#pragma once

#include <map>
#include <memory>
#include <span>
#include <vector>

#include "djinn/backend/backend.h"
#include "djinn/core/status.h"
#include "djinn/exec/interpreter.h"
#include "djinn/models/model.h"

namespace djinn {

struct ForwardResult {
  std::vector<float> logits;  // [rows, vocab] row-major; rows = tokens (all_logits) or 1
  int64_t rows = 0;
  int32_t next_token = -1;    // greedy choice after the last token
};

struct GenerateResult {
  std::vector<int32_t> new_tokens;          // max_new_tokens greedy tokens
  double prefill_ms = 0.0;                  // prompt forward, including its first token
  std::vector<double> decode_step_ms;       // one per decode step (max_new_tokens - 1 of them)
  double decode_ms_per_token() const;       // mean of decode_step_ms, 0 if none
};

class InferenceSession {
 public:
  // `capacity`: the most tokens this session may hold (prompt + generated),
  // at most the model's max_positions.
  static Result<std::unique_ptr<InferenceSession>> create(std::shared_ptr<const Model> model, Backend& backend,
                                                          int64_t capacity);
  ~InferenceSession();

  // Runs `tokens` at positions [length, length + n) and appends their K/V.
  Result<ForwardResult> forward(std::span<const int32_t> tokens, bool all_logits = false);
  // Prefill `prompt` then greedy-decode; the KV cache keeps everything.
  Result<GenerateResult> generate(std::span<const int32_t> prompt, int64_t max_new_tokens);

  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  size_t kv_bytes() const;
  const Model& model() const { return *model_; }
  // The step graph for (phase, all_logits), built on first use.
  const ModelGraph& step_graph(Phase phase, bool all_logits);

 private:
  InferenceSession(std::shared_ptr<const Model> model, Backend& backend, int64_t capacity);
  Status validate_tokens(std::span<const int32_t> tokens) const;

  struct StepGraph {
    ModelGraph model_graph;
    std::vector<TensorView> weights;  // parallel to graph.weight_values()
  };

  std::shared_ptr<const Model> model_;
  Backend& backend_;
  Interpreter interpreter_;
  int64_t capacity_;
  int64_t length_ = 0;
  std::vector<TensorView> kv_;  // slot order
  std::map<std::pair<Phase, bool>, StepGraph> graphs_;
};

}  // namespace djinn
