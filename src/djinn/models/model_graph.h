// Models as graph builders: one function per family turns a ModelConfig into the SRG
// of one step (prefill or decode). The same builder makes both phases; they differ
// only in the row dimension (seq for prefill, 1 for decode).
//
// Every graph has the io inputs, in this order,
//   token_ids [rows] i32, positions [rows] i32 (absolute positions past .. past+rows-1)
// the KV inputs, in slot order (layer 0 K, layer 0 V, layer 1 K, ...), each
//   [kv_capacity, n_kv_heads * head_dim] in kv_dtype,
// and the outputs, in this order,
//   logits [rows, vocab] f32 (all_logits) or [1, vocab] f32 (last position only),
//   next_token [1] i32 (greedy choice at the last position).
// The builder also lists the weights it reads (checkpoint names, shapes, how a
// preset initialises them): the one source of truth for loading and random init.
#pragma once

#include <string>
#include <vector>

#include "djinn/core/shape.h"
#include "djinn/graph/graph.h"
#include "djinn/models/model_config.h"

namespace djinn {

enum class WeightInit : uint8_t { kNormal, kOnes, kZeros };

struct WeightSpec {
  std::string name;  // Hugging Face checkpoint name (GPT-2: without the "transformer." prefix)
  Shape shape;
  WeightInit init = WeightInit::kNormal;
};

struct GraphOptions {
  Phase phase = Phase::kPrefill;
  int64_t kv_capacity = 0;  // rows of each KV cache tensor (the session's max context)
  bool all_logits = false;  // logits for every row, not only the last
  // Decode only: one step for `batch` sessions at once. Row b is session b's token; the
  // KV inputs are layer-major, then session, then K/V (layer 0: s0 K, s0 V, s1 K, ...);
  // weights and matmuls are shared by the batch, kv_append and attention run per
  // session on its own caches at its own position. Outputs: logits [batch, vocab],
  // next_token [batch].
  int64_t batch = 1;
  DType weight_dtype = DType::kF32;
  DType kv_dtype = DType::kF32;
};

struct ModelGraph {
  Graph graph{Phase::kPrefill};
  ValueId token_ids = -1;
  ValueId positions = -1;
  ValueId logits = -1;
  ValueId next_token = -1;
  std::vector<WeightSpec> weights;
};

ModelGraph build_model_graph(const ModelConfig& config, const GraphOptions& options);
ModelGraph build_gpt2_graph(const ModelConfig& config, const GraphOptions& options);
ModelGraph build_llama_graph(const ModelConfig& config, const GraphOptions& options);

// The weights a model of this config reads (the same list every phase's graph declares).
std::vector<WeightSpec> model_weight_specs(const ModelConfig& config);

namespace detail {
// Shared by the family builders: declares io / kv inputs and weights, and finishes
// the graph with the lm head, logits and next-token outputs.
class GraphBuilderBase {
 public:
  GraphBuilderBase(const ModelConfig& config, const GraphOptions& options);

  Dim rows() const { return options_.phase == Phase::kDecode ? Dim(options_.batch) : Dim(Symbol::kSeq); }
  ValueId weight(const std::string& name, Shape shape, WeightInit init = WeightInit::kNormal);
  // Declares the layer's K and V caches (of batch row `session`); returns {k_cache, v_cache}.
  std::pair<ValueId, ValueId> kv_caches(int64_t layer, int64_t session = 0);
  ValueId node(OpKind op, std::vector<ValueId> inputs, const OpAttrs& attrs = {}, std::string name = {}) {
    return out_.graph.add_node(op, std::move(inputs), attrs, std::move(name));
  }
  ValueId linear(ValueId x, ValueId w, bool transpose_b) {
    OpAttrs attrs;
    attrs.transpose_b = transpose_b;
    return node(OpKind::kMatMul, {x, w}, attrs);
  }
  // Appends k / v of the step to the layer's caches and attends q over them, at the
  // step's positions.
  ValueId attend(int64_t layer, ValueId q, ValueId k, ValueId v, float scale);
  // Final norm output [rows, H] -> logits and next_token outputs.
  ModelGraph finish(ValueId final_hidden, ValueId lm_head_weight);

  const ModelConfig& config() const { return config_; }
  ModelGraph& out() { return out_; }

 private:
  const ModelConfig& config_;
  GraphOptions options_;
  ModelGraph out_;
};
}  // namespace detail

}  // namespace djinn
