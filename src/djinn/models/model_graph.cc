#include "djinn/models/model_graph.h"

#include <fmt/format.h>

namespace djinn {
namespace detail {

GraphBuilderBase::GraphBuilderBase(const ModelConfig& config, const GraphOptions& options)
    : config_(config), options_(options) {
  DJINN_CHECK(options.kv_capacity > 0, "kv_capacity must be > 0, got {}", options.kv_capacity);
  DJINN_CHECK(options.batch >= 1 && (options.batch == 1 || options.phase == Phase::kDecode),
              "batch {} > 1 is for decode graphs only", options.batch);
  DJINN_CHECK(is_floating(options.weight_dtype) && is_floating(options.kv_dtype), "weights and KV must be floating");
  out_.graph = Graph(options.phase);
  out_.token_ids = out_.graph.add_io_input("token_ids", DType::kI32, {rows()});
  out_.positions = out_.graph.add_io_input("positions", DType::kI32, {rows()});
}

ValueId GraphBuilderBase::weight(const std::string& name, Shape shape, WeightInit init) {
  SymShape sym;
  for (int64_t d : shape) sym.dims.emplace_back(d);
  out_.weights.push_back(WeightSpec{name, std::move(shape), init});
  return out_.graph.add_weight(name, options_.weight_dtype, std::move(sym));
}

std::pair<ValueId, ValueId> GraphBuilderBase::kv_caches(int64_t layer, int64_t session) {
  const SymShape shape{options_.kv_capacity, config_.n_kv_heads * config_.head_dim};
  const std::string prefix = options_.batch == 1 ? fmt::format("kv.{}", layer) : fmt::format("kv.{}.s{}", layer, session);
  const ValueId k = out_.graph.add_kv(prefix + ".k", options_.kv_dtype, shape);
  const ValueId v = out_.graph.add_kv(prefix + ".v", options_.kv_dtype, shape);
  return {k, v};
}

ValueId GraphBuilderBase::attend(int64_t layer, ValueId q, ValueId k, ValueId v, float scale) {
  OpAttrs attrs;
  attrs.n_heads = config_.n_heads;
  attrs.n_kv_heads = config_.n_kv_heads;
  attrs.head_dim = config_.head_dim;
  attrs.scale = scale;
  auto one_sequence = [&](ValueId q_rows, ValueId k_rows, ValueId v_rows, ValueId positions, int64_t session) {
    const auto [k_cache, v_cache] = kv_caches(layer, session);
    return node(OpKind::kAttention,
                {q_rows, node(OpKind::kKvAppend, {k_cache, k_rows, positions}),
                 node(OpKind::kKvAppend, {v_cache, v_rows, positions}), positions},
                attrs);
  };
  if (options_.batch == 1) return one_sequence(q, k, v, out_.positions, 0);
  // A batched decode step: row b is session b, with its own caches and position; one
  // op appends every session's row and attends each over its own caches.
  std::vector<ValueId> inputs = {q, k, v, out_.positions};
  for (int64_t b = 0; b < options_.batch; ++b) {
    const auto [k_cache, v_cache] = kv_caches(layer, b);
    inputs.push_back(k_cache);
    inputs.push_back(v_cache);
  }
  return node(OpKind::kBatchedDecodeAttention, std::move(inputs), attrs);
}

ModelGraph GraphBuilderBase::finish(ValueId final_hidden, ValueId lm_head_weight) {
  if (options_.batch > 1) {  // every row is a session's last token
    out_.logits = node(OpKind::kMatMul, {final_hidden, lm_head_weight}, OpAttrs{.transpose_b = true}, "logits");
    out_.next_token = node(OpKind::kArgmax, {out_.logits}, {}, "next_token");
    out_.graph.mark_output(out_.logits);
    out_.graph.mark_output(out_.next_token);
    return std::move(out_);
  }
  const ValueId head_input = options_.all_logits ? final_hidden : node(OpKind::kLastRow, {final_hidden});
  out_.logits = node(OpKind::kMatMul, {head_input, lm_head_weight}, OpAttrs{.transpose_b = true}, "logits");
  const ValueId last_logits = options_.all_logits ? node(OpKind::kLastRow, {out_.logits}) : out_.logits;
  out_.next_token = node(OpKind::kArgmax, {last_logits}, {}, "next_token");
  out_.graph.mark_output(out_.logits);
  out_.graph.mark_output(out_.next_token);
  return std::move(out_);
}

}  // namespace detail

ModelGraph build_model_graph(const ModelConfig& config, const GraphOptions& options) {
  switch (config.family) {
    case ModelFamily::kGpt2: return build_gpt2_graph(config, options);
    case ModelFamily::kLlama: return build_llama_graph(config, options);
  }
  DJINN_ASSERT(false, "unknown family");
}

std::vector<WeightSpec> model_weight_specs(const ModelConfig& config) {
  GraphOptions options;
  options.kv_capacity = 1;
  return build_model_graph(config, options).weights;
}

}  // namespace djinn
