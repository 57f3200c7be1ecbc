#include "djinn/models/model_config.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

namespace djinn {
namespace {

std::filesystem::path write_config(const std::string& name, const std::string& json) {
  const auto dir = std::filesystem::temp_directory_path() / ("djinn_config_test_" + name);
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << json;
  return dir;
}

TEST(ModelConfig, ReadsGoldenGpt2) {
  Result<ModelConfig> c = load_hf_config(std::filesystem::path(DJINN_GOLDEN_DIR) / "gpt2-tiny");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->family, ModelFamily::kGpt2);
  EXPECT_EQ(c->hidden_size, 64);
  EXPECT_EQ(c->n_heads, 4);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->intermediate_size, 256);  // n_inner null -> 4 x n_embd
  EXPECT_EQ(c->max_positions, 128);
  EXPECT_TRUE(c->tie_embeddings);
}

TEST(ModelConfig, ReadsGoldenLlamaWithGqaAndNestedRope) {
  Result<ModelConfig> c = load_hf_config(std::filesystem::path(DJINN_GOLDEN_DIR) / "llama-tiny");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->family, ModelFamily::kLlama);
  EXPECT_EQ(c->n_kv_heads, 2);
  EXPECT_EQ(c->intermediate_size, 176);
  EXPECT_FLOAT_EQ(c->rope_theta, 10000.0f);
  EXPECT_FLOAT_EQ(c->norm_eps, 1e-6f);
  EXPECT_FALSE(c->tie_embeddings);
  EXPECT_EQ(c->kv_bytes_per_token(DType::kF32), 2u * 2 * 2 * 16 * 4);
}

TEST(ModelConfig, ErrorsNameFileAndField) {
  const auto missing = load_hf_config(write_config("missing_field", R"({"model_type": "llama", "vocab_size": 10})"));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("config.json"), std::string::npos);
  EXPECT_NE(missing.status().message().find("hidden_size"), std::string::npos);

  const auto wrong_type = load_hf_config(write_config("unknown_type", R"({"model_type": "bert"})"));
  ASSERT_FALSE(wrong_type.ok());
  EXPECT_NE(wrong_type.status().message().find("bert"), std::string::npos);

  const auto not_json = load_hf_config(write_config("not_json", "{ nope"));
  ASSERT_FALSE(not_json.ok());
  EXPECT_NE(not_json.status().message().find("not a valid JSON"), std::string::npos);

  const auto no_dir = load_hf_config("/nonexistent/model");
  ASSERT_FALSE(no_dir.ok());
  EXPECT_EQ(no_dir.status().code(), StatusCode::kNotFound);

  const auto bad_heads = load_hf_config(write_config("bad_heads", R"({"model_type": "llama", "vocab_size": 10,
      "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 3,
      "intermediate_size": 16, "max_position_embeddings": 8})"));
  ASSERT_FALSE(bad_heads.ok());
  EXPECT_NE(bad_heads.status().message().find("n_kv_heads"), std::string::npos);

  const auto scaled_rope = load_hf_config(write_config("scaled_rope", R"({"model_type": "llama", "vocab_size": 10,
      "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16,
      "max_position_embeddings": 8, "rope_scaling": {"type": "linear", "factor": 2.0}})"));
  ASSERT_FALSE(scaled_rope.ok());
  EXPECT_EQ(scaled_rope.status().code(), StatusCode::kInvalidArgument);
}

TEST(ModelConfig, PresetsHaveTheRealShapes) {
  const ModelConfig gpt2 = *preset_config("gpt2");
  EXPECT_EQ(gpt2.hidden_size, 768);
  EXPECT_EQ(gpt2.n_layers, 12);
  EXPECT_EQ(gpt2.vocab_size, 50257);
  const ModelConfig llama13 = *preset_config("llama-2-13b");
  EXPECT_EQ(llama13.hidden_size, 5120);
  EXPECT_EQ(llama13.n_layers, 40);
  EXPECT_EQ(llama13.intermediate_size, 13824);
  // 13B in f16: 2 x 40 layers x 5120 x 2 bytes of KV per token.
  EXPECT_EQ(llama13.kv_bytes_per_token(DType::kF16), 819200u);
  EXPECT_EQ(preset_config("llama-tiny-mqa")->n_kv_heads, 1);
  for (const std::string& name : preset_names()) EXPECT_TRUE(preset_config(name)->validate().ok()) << name;
  EXPECT_EQ(preset_config("gpt5").status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace djinn
