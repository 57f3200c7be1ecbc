// ModelConfig: the hyper-parameters of a GPT-2 or Llama family model, read from a
// Hugging Face config.json or taken from a named preset (random weights of the real
// shapes, no download).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "djinn/core/dtype.h"
#include "djinn/core/status.h"

namespace djinn {

enum class ModelFamily : uint8_t { kGpt2, kLlama };
const char* family_name(ModelFamily family);

struct ModelConfig {
  ModelFamily family = ModelFamily::kGpt2;
  std::string name;              // preset name or the model directory
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;        // == n_heads for MHA, 1 for MQA, in between for GQA
  int64_t head_dim = 0;
  int64_t intermediate_size = 0; // MLP width
  int64_t max_positions = 0;     // longest context the model supports (tokens)
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;   // Llama only
  bool tie_embeddings = false;   // lm_head shares the token embedding
  bool scale_attn_by_inverse_layer_idx = false;  // GPT-2 option: attention scale / (layer + 1)
  float initializer_range = 0.02f;                // std of random weights (presets)

  // KV cache bytes one token adds across all layers: 2 (K and V) x layers x kv_heads x head_dim x dtype.
  size_t kv_bytes_per_token(DType kv_dtype) const;
  // Checks the numbers fit together (heads divide, head_dim even for RoPE, ...).
  Status validate() const;
};

// Reads `dir`/config.json (model_type "gpt2" or "llama"). Errors name the file and the field.
Result<ModelConfig> load_hf_config(const std::filesystem::path& dir);

// Presets: gpt2, gpt2-medium, llama-2-7b, llama-2-13b, and the tiny test models
// gpt2-tiny, llama-tiny (the golden fixtures' shapes) and llama-tiny-mqa.
Result<ModelConfig> preset_config(std::string_view name);
std::vector<std::string> preset_names();

}  // namespace djinn
