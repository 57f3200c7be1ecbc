// GPT-2 (Radford et al. 2019) as Hugging Face's GPT2LMHeadModel computes it:
// learned position embeddings, pre-LayerNorm blocks, fused QKV Conv1D projections
// (weights stored [in, out], hence matmul without transpose), gelu_new MLP, and an
// lm head tied to the token embedding.
#include <fmt/format.h>

#include <cmath>

#include "djinn/models/model_graph.h"

namespace djinn {

ModelGraph build_gpt2_graph(const ModelConfig& c, const GraphOptions& options) {
  detail::GraphBuilderBase b(c, options);
  const int64_t hidden = c.hidden_size;
  auto layernorm = [&](ValueId x, const std::string& prefix) {
    const ValueId gamma = b.weight(prefix + ".weight", {hidden}, WeightInit::kOnes);
    const ValueId beta = b.weight(prefix + ".bias", {hidden}, WeightInit::kZeros);
    return b.node(OpKind::kLayerNorm, {x, gamma, beta}, OpAttrs{.eps = c.norm_eps});
  };
  // Conv1D: y = x . W[in, out] + bias[out]
  auto conv1d = [&](ValueId x, const std::string& prefix, int64_t in, int64_t out) {
    const ValueId w = b.weight(prefix + ".weight", {in, out});
    const ValueId bias = b.weight(prefix + ".bias", {out}, WeightInit::kZeros);
    return b.node(OpKind::kAdd, {b.linear(x, w, /*transpose_b=*/false), bias});
  };

  ModelGraph& g = b.out();
  const ValueId wte = b.weight("wte.weight", {c.vocab_size, hidden});
  const ValueId wpe = b.weight("wpe.weight", {c.max_positions, hidden});
  ValueId x = b.node(OpKind::kAdd,
                     {b.node(OpKind::kEmbedding, {wte, g.token_ids}), b.node(OpKind::kEmbedding, {wpe, g.positions})});
  for (int64_t layer = 0; layer < c.n_layers; ++layer) {
    const std::string p = fmt::format("h.{}", layer);
    const ValueId qkv = conv1d(layernorm(x, p + ".ln_1"), p + ".attn.c_attn", hidden, 3 * hidden);
    auto split = [&](int64_t index) {
      return b.node(OpKind::kSlice, {qkv}, OpAttrs{.start = index * hidden, .length = hidden});
    };
    float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
    if (c.scale_attn_by_inverse_layer_idx) scale /= static_cast<float>(layer + 1);
    const ValueId attn = b.attend(layer, split(0), split(1), split(2), scale);
    x = b.node(OpKind::kAdd, {x, conv1d(attn, p + ".attn.c_proj", hidden, hidden)});
    const ValueId up = conv1d(layernorm(x, p + ".ln_2"), p + ".mlp.c_fc", hidden, c.intermediate_size);
    const ValueId down = conv1d(b.node(OpKind::kGeluNew, {up}), p + ".mlp.c_proj", c.intermediate_size, hidden);
    x = b.node(OpKind::kAdd, {x, down});
  }
  return b.finish(layernorm(x, "ln_f"), wte);
}

}  // namespace djinn
