// Llama (Touvron et al. 2023) as Hugging Face's LlamaForCausalLM computes it:
// RMSNorm pre-norm blocks, rotary position embeddings (rotate-half layout),
// grouped-query attention (n_kv_heads <= n_heads; MQA when 1), a SwiGLU MLP, and an
// lm head that is separate unless tie_word_embeddings. nn.Linear weights are
// [out, in], hence matmul with transpose_b.
#include <fmt/format.h>

#include <cmath>

#include "djinn/models/model_graph.h"

namespace djinn {

ModelGraph build_llama_graph(const ModelConfig& c, const GraphOptions& options) {
  detail::GraphBuilderBase b(c, options);
  const int64_t hidden = c.hidden_size;
  const int64_t q_width = c.n_heads * c.head_dim, kv_width = c.n_kv_heads * c.head_dim;
  auto rmsnorm = [&](ValueId x, const std::string& name) {
    return b.node(OpKind::kRmsNorm, {x, b.weight(name, {hidden}, WeightInit::kOnes)}, OpAttrs{.eps = c.norm_eps});
  };
  auto linear = [&](ValueId x, const std::string& name, int64_t in, int64_t out) {
    return b.linear(x, b.weight(name, {out, in}), /*transpose_b=*/true);
  };
  auto linear_add = [&](ValueId x, const std::string& name, int64_t in, int64_t out, ValueId residual) {
    return b.node(OpKind::kMatMulAdd, {x, b.weight(name, {out, in}), residual}, OpAttrs{.transpose_b = true});
  };
  const OpAttrs rope_attrs{.head_dim = c.head_dim, .rope_theta = c.rope_theta};

  ModelGraph& g = b.out();
  const ValueId embed = b.weight("model.embed_tokens.weight", {c.vocab_size, hidden});
  ValueId x = b.node(OpKind::kEmbedding, {embed, g.token_ids});
  for (int64_t layer = 0; layer < c.n_layers; ++layer) {
    const std::string p = fmt::format("model.layers.{}", layer);
    const ValueId h = rmsnorm(x, p + ".input_layernorm.weight");
    const ValueId q = b.node(OpKind::kRope, {linear(h, p + ".self_attn.q_proj.weight", hidden, q_width), g.positions},
                             rope_attrs);
    const ValueId k = b.node(OpKind::kRope, {linear(h, p + ".self_attn.k_proj.weight", hidden, kv_width), g.positions},
                             rope_attrs);
    const ValueId v = linear(h, p + ".self_attn.v_proj.weight", hidden, kv_width);
    const ValueId attn = b.attend(layer, q, k, v, 1.0f / std::sqrt(static_cast<float>(c.head_dim)));
    // Residual connections: each output projection adds x as it writes (matmul_add).
    x = linear_add(attn, p + ".self_attn.o_proj.weight", q_width, hidden, x);

    const ValueId h2 = rmsnorm(x, p + ".post_attention_layernorm.weight");
    // SwiGLU: silu(gate) * up in one op (one pass over the activations, one kernel less).
    const ValueId gate = linear(h2, p + ".mlp.gate_proj.weight", hidden, c.intermediate_size);
    const ValueId up = linear(h2, p + ".mlp.up_proj.weight", hidden, c.intermediate_size);
    x = linear_add(b.node(OpKind::kSiluMul, {gate, up}), p + ".mlp.down_proj.weight", c.intermediate_size, hidden, x);
  }
  const ValueId lm_head = c.tie_embeddings ? embed : b.weight("lm_head.weight", {c.vocab_size, hidden});
  return b.finish(rmsnorm(x, "model.norm.weight"), lm_head);
}

}  // namespace djinn
