#include "djinn/models/model_config.h"

#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>

namespace djinn {

const char* family_name(ModelFamily family) {
  switch (family) {
    case ModelFamily::kGpt2: return "gpt2";
    case ModelFamily::kLlama: return "llama";
  }
  return "?";
}

size_t ModelConfig::kv_bytes_per_token(DType kv_dtype) const {
  return 2 * static_cast<size_t>(n_layers * n_kv_heads * head_dim) * dtype_size(kv_dtype);
}

Status ModelConfig::validate() const {
  auto bad = [&](std::string what) { return invalid_argument(fmt::format("model {}: {}", name, what)); };
  if (vocab_size <= 0 || hidden_size <= 0 || n_layers <= 0 || n_heads <= 0 || n_kv_heads <= 0 || head_dim <= 0 ||
      intermediate_size <= 0 || max_positions <= 0)
    return bad("every size must be positive");
  if (vocab_size > INT32_MAX) return bad(fmt::format("vocab_size {} does not fit i32 token ids", vocab_size));
  if (n_heads % n_kv_heads != 0)
    return bad(fmt::format("n_heads {} is not a multiple of n_kv_heads {}", n_heads, n_kv_heads));
  if (family == ModelFamily::kGpt2 && n_heads * head_dim != hidden_size)
    return bad(fmt::format("n_embd {} is not n_head {} x head_dim {}", hidden_size, n_heads, head_dim));
  if (family == ModelFamily::kLlama && head_dim % 2 != 0) return bad(fmt::format("RoPE needs an even head_dim, got {}", head_dim));
  if (!(norm_eps > 0.0f)) return bad("norm epsilon must be > 0");
  return {};
}

namespace {

using nlohmann::json;

// Field access that turns every missing or mistyped field into a Status naming the file.
class ConfigReader {
 public:
  ConfigReader(const json& root, std::string path) : root_(root), path_(std::move(path)) {}

  Status error(std::string_view field, std::string_view what) const {
    return invalid_argument(fmt::format("{}: field '{}' {}", path_, field, what));
  }
  bool has(const char* field) const { return root_.contains(field) && !root_[field].is_null(); }

  Result<int64_t> integer(const char* field) const {
    if (!has(field)) return error(field, "is missing");
    if (!root_[field].is_number_integer()) return error(field, "must be an integer");
    return root_[field].get<int64_t>();
  }
  Result<int64_t> integer_or(const char* field, int64_t fallback) const {
    return has(field) ? integer(field) : Result<int64_t>(fallback);
  }
  Result<float> number_or(const char* field, float fallback) const {
    if (!has(field)) return fallback;
    if (!root_[field].is_number()) return error(field, "must be a number");
    return root_[field].get<float>();
  }
  Result<bool> boolean_or(const char* field, bool fallback) const {
    if (!has(field)) return fallback;
    if (!root_[field].is_boolean()) return error(field, "must be true or false");
    return root_[field].get<bool>();
  }
  Result<std::string> string_or(const char* field, std::string fallback) const {
    if (!has(field)) return fallback;
    if (!root_[field].is_string()) return error(field, "must be a string");
    return root_[field].get<std::string>();
  }
  const json& root() const { return root_; }

 private:
  const json& root_;
  std::string path_;
};

Result<ModelConfig> parse_gpt2(const ConfigReader& r) {
  ModelConfig c;
  c.family = ModelFamily::kGpt2;
  DJINN_ASSIGN_OR_RETURN(c.vocab_size, r.integer("vocab_size"));
  DJINN_ASSIGN_OR_RETURN(c.hidden_size, r.integer("n_embd"));
  DJINN_ASSIGN_OR_RETURN(c.n_layers, r.integer("n_layer"));
  DJINN_ASSIGN_OR_RETURN(c.n_heads, r.integer("n_head"));
  DJINN_ASSIGN_OR_RETURN(c.max_positions, r.integer("n_positions"));
  DJINN_ASSIGN_OR_RETURN(c.intermediate_size, r.integer_or("n_inner", 4 * c.hidden_size));
  DJINN_ASSIGN_OR_RETURN(c.norm_eps, r.number_or("layer_norm_epsilon", 1e-5f));
  DJINN_ASSIGN_OR_RETURN(c.tie_embeddings, r.boolean_or("tie_word_embeddings", true));
  DJINN_ASSIGN_OR_RETURN(c.scale_attn_by_inverse_layer_idx, r.boolean_or("scale_attn_by_inverse_layer_idx", false));
  DJINN_ASSIGN_OR_RETURN(c.initializer_range, r.number_or("initializer_range", 0.02f));
  DJINN_ASSIGN_OR_RETURN(std::string activation, r.string_or("activation_function", "gelu_new"));
  if (activation != "gelu_new" && activation != "gelu_pytorch_tanh")
    return r.error("activation_function", fmt::format("'{}' is not supported (gelu_new only)", activation));
  DJINN_ASSIGN_OR_RETURN(bool scale_weights, r.boolean_or("scale_attn_weights", true));
  if (!scale_weights) return r.error("scale_attn_weights", "false is not supported");
  if (!c.tie_embeddings) return r.error("tie_word_embeddings", "false is not supported for GPT-2");
  c.n_kv_heads = c.n_heads;
  if (c.n_heads > 0) c.head_dim = c.hidden_size / c.n_heads;
  return c;
}

Result<ModelConfig> parse_llama(const ConfigReader& r) {
  ModelConfig c;
  c.family = ModelFamily::kLlama;
  DJINN_ASSIGN_OR_RETURN(c.vocab_size, r.integer("vocab_size"));
  DJINN_ASSIGN_OR_RETURN(c.hidden_size, r.integer("hidden_size"));
  DJINN_ASSIGN_OR_RETURN(c.n_layers, r.integer("num_hidden_layers"));
  DJINN_ASSIGN_OR_RETURN(c.n_heads, r.integer("num_attention_heads"));
  DJINN_ASSIGN_OR_RETURN(c.n_kv_heads, r.integer_or("num_key_value_heads", c.n_heads));
  DJINN_ASSIGN_OR_RETURN(c.intermediate_size, r.integer("intermediate_size"));
  DJINN_ASSIGN_OR_RETURN(c.max_positions, r.integer("max_position_embeddings"));
  DJINN_ASSIGN_OR_RETURN(c.head_dim, r.integer_or("head_dim", c.n_heads > 0 ? c.hidden_size / c.n_heads : 0));
  DJINN_ASSIGN_OR_RETURN(c.norm_eps, r.number_or("rms_norm_eps", 1e-6f));
  DJINN_ASSIGN_OR_RETURN(c.tie_embeddings, r.boolean_or("tie_word_embeddings", false));
  DJINN_ASSIGN_OR_RETURN(c.initializer_range, r.number_or("initializer_range", 0.02f));
  DJINN_ASSIGN_OR_RETURN(std::string activation, r.string_or("hidden_act", "silu"));
  if (activation != "silu") return r.error("hidden_act", fmt::format("'{}' is not supported (silu only)", activation));
  for (const char* field : {"attention_bias", "mlp_bias"}) {
    DJINN_ASSIGN_OR_RETURN(bool bias, r.boolean_or(field, false));
    if (bias) return r.error(field, "true is not supported");
  }
  // RoPE: transformers >= 5 nests it in rope_parameters, older versions use rope_theta / rope_scaling.
  DJINN_ASSIGN_OR_RETURN(c.rope_theta, r.number_or("rope_theta", 10000.0f));
  if (r.has("rope_parameters")) {
    const json& rope = r.root()["rope_parameters"];
    if (!rope.is_object()) return r.error("rope_parameters", "must be an object");
    ConfigReader rope_reader(rope, "rope_parameters");
    DJINN_ASSIGN_OR_RETURN(c.rope_theta, rope_reader.number_or("rope_theta", c.rope_theta));
    DJINN_ASSIGN_OR_RETURN(std::string type, rope_reader.string_or("rope_type", "default"));
    if (type != "default") return r.error("rope_parameters.rope_type", fmt::format("'{}' is not supported", type));
  }
  if (r.has("rope_scaling")) return r.error("rope_scaling", "is not supported (default RoPE only)");
  return c;
}

}  // namespace

Result<ModelConfig> load_hf_config(const std::filesystem::path& dir) {
  const std::filesystem::path path = dir / "config.json";
  std::ifstream in(path);
  if (!in) return not_found(fmt::format("{}: cannot open (is {} a model directory?)", path.string(), dir.string()));
  json root = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object())
    return invalid_argument(fmt::format("{}: not a valid JSON object", path.string()));
  ConfigReader reader(root, path.string());
  DJINN_ASSIGN_OR_RETURN(std::string model_type, reader.string_or("model_type", ""));
  Result<ModelConfig> config = model_type == "gpt2"    ? parse_gpt2(reader)
                               : model_type == "llama" ? parse_llama(reader)
                                                       : Result<ModelConfig>(reader.error(
                                                             "model_type", fmt::format("'{}' is not gpt2 or llama", model_type)));
  if (!config.ok()) return config;
  config->name = dir.string();
  DJINN_RETURN_IF_ERROR(config->validate());
  return config;
}

namespace {

ModelConfig gpt2_preset(std::string name, int64_t hidden, int64_t layers, int64_t heads, int64_t vocab, int64_t positions) {
  ModelConfig c;
  c.family = ModelFamily::kGpt2;
  c.name = std::move(name);
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.n_layers = layers;
  c.n_heads = c.n_kv_heads = heads;
  c.head_dim = hidden / heads;
  c.intermediate_size = 4 * hidden;
  c.max_positions = positions;
  c.norm_eps = 1e-5f;
  c.tie_embeddings = true;
  return c;
}

ModelConfig llama_preset(std::string name, int64_t hidden, int64_t intermediate, int64_t layers, int64_t heads,
                         int64_t kv_heads, int64_t vocab, int64_t positions, float eps) {
  ModelConfig c;
  c.family = ModelFamily::kLlama;
  c.name = std::move(name);
  c.vocab_size = vocab;
  c.hidden_size = hidden;
  c.intermediate_size = intermediate;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.max_positions = positions;
  c.norm_eps = eps;
  c.rope_theta = 10000.0f;
  return c;
}

std::vector<ModelConfig> all_presets() {
  std::vector<ModelConfig> presets = {
      gpt2_preset("gpt2", 768, 12, 12, 50257, 1024),
      gpt2_preset("gpt2-medium", 1024, 24, 16, 50257, 1024),
      llama_preset("llama-2-7b", 4096, 11008, 32, 32, 32, 32000, 4096, 1e-5f),
      llama_preset("llama-2-13b", 5120, 13824, 40, 40, 40, 32000, 4096, 1e-5f),
      gpt2_preset("gpt2-tiny", 64, 2, 4, 512, 128),
      llama_preset("llama-tiny", 64, 176, 2, 4, 2, 512, 128, 1e-6f),
      llama_preset("llama-tiny-mqa", 64, 176, 2, 4, 1, 512, 128, 1e-6f),
  };
  for (ModelConfig& c : presets)
    if (c.name.ends_with("-tiny") || c.name.ends_with("-mqa")) c.initializer_range = 0.1f;
  return presets;
}

}  // namespace

Result<ModelConfig> preset_config(std::string_view name) {
  for (ModelConfig& c : all_presets())
    if (c.name == name) return c;
  return not_found(fmt::format("'{}' is neither a model directory nor a preset (presets: {})", name,
                               fmt::join(preset_names(), ", ")));
}

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const ModelConfig& c : all_presets()) names.push_back(c.name);
  return names;
}

}  // namespace djinn
