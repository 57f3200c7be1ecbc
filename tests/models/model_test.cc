#include "djinn/models/model.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "djinn/models/safetensors.h"

namespace djinn {
namespace {

const std::filesystem::path kGolden = DJINN_GOLDEN_DIR;

int64_t spec_params(const std::string& preset) {
  int64_t total = 0;
  for (const WeightSpec& spec : model_weight_specs(*preset_config(preset))) total += num_elements(spec.shape);
  return total;
}

TEST(Model, PresetParameterCountsMatchThePublishedModels) {
  EXPECT_EQ(spec_params("gpt2"), 124439808);        // Hugging Face gpt2
  EXPECT_EQ(spec_params("gpt2-medium"), 354823168);  // Hugging Face gpt2-medium
  EXPECT_EQ(spec_params("llama-2-7b"), 6738415616);  // Llama-2-7b-hf
  EXPECT_EQ(spec_params("llama-2-13b"), 13015864320);
}

TEST(Model, RandomWeightsAreDeterministicUnderSeed) {
  auto load = [](uint64_t seed) { return *Model::load("llama-tiny", {.dtype = DType::kF32, .seed = seed}); };
  const auto a = load(7), b = load(7), c = load(8);
  const TensorView wa = *a->weight("model.layers.1.mlp.up_proj.weight");
  const TensorView wb = *b->weight("model.layers.1.mlp.up_proj.weight");
  const TensorView wc = *c->weight("model.layers.1.mlp.up_proj.weight");
  EXPECT_EQ(std::memcmp(wa.data, wb.data, wa.nbytes()), 0);
  EXPECT_NE(std::memcmp(wa.data, wc.data, wa.nbytes()), 0);
  // Norm gains start at one.
  const TensorView gain = *a->weight("model.norm.weight");
  for (int64_t i = 0; i < gain.numel(); ++i) EXPECT_EQ(gain.as<float>()[i], 1.0f);
  EXPECT_TRUE(a->is_preset());
}

TEST(Model, LoadsGoldenDirectoryExactly) {
  const auto model = Model::load((kGolden / "gpt2-tiny").string(), {});
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  const auto file = *SafetensorsFile::open(kGolden / "gpt2-tiny" / "model.safetensors");
  const TensorView in_file = *file.tensor("transformer.h.1.attn.c_attn.weight");
  const TensorView loaded = *(*model)->weight("h.1.attn.c_attn.weight");
  ASSERT_EQ(loaded.shape, in_file.shape);
  EXPECT_EQ(std::memcmp(loaded.data, in_file.data, in_file.nbytes()), 0);
  EXPECT_EQ((*model)->param_count(), 141056);
  EXPECT_FALSE((*model)->is_preset());
}

TEST(Model, ConvertsToHalfStorage) {
  const auto f32 = *Model::load((kGolden / "llama-tiny").string(), {.dtype = DType::kF32});
  const auto f16 = *Model::load((kGolden / "llama-tiny").string(), {.dtype = DType::kF16});
  const auto bf16 = *Model::load((kGolden / "llama-tiny").string(), {.dtype = DType::kBF16});
  EXPECT_EQ(f16->weight_bytes() * 2, f32->weight_bytes());
  const TensorView w32 = *f32->weight("lm_head.weight"), w16 = *f16->weight("lm_head.weight"),
                   wb16 = *bf16->weight("lm_head.weight");
  for (int64_t i = 0; i < w32.numel(); i += 97) {
    EXPECT_EQ(w16.as<uint16_t>()[i], float_to_half(w32.as<float>()[i]));
    EXPECT_EQ(wb16.as<uint16_t>()[i], float_to_bf16(w32.as<float>()[i]));
  }
}

std::filesystem::path copy_golden(const std::string& name, const std::string& tag) {
  const auto dir = std::filesystem::temp_directory_path() / ("djinn_model_test_" + tag);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  for (const char* file : {"config.json", "model.safetensors"})
    std::filesystem::copy_file(kGolden / name / file, dir / file);
  std::filesystem::permissions(dir / "model.safetensors", std::filesystem::perms::owner_write,
                               std::filesystem::perm_options::add);
  return dir;
}

TEST(Model, MissingTensorIsNamed) {
  const auto dir = copy_golden("llama-tiny", "missing_tensor");
  // Re-write the checkpoint without one tensor.
  {
    const auto file = *SafetensorsFile::open(dir / "model.safetensors");
    std::vector<std::pair<std::string, TensorView>> kept;
    std::vector<std::vector<std::byte>> copies;
    for (const std::string& name : file.names()) {
      if (name == "model.layers.1.mlp.gate_proj.weight") continue;
      TensorView view = *file.tensor(name);
      copies.emplace_back(static_cast<std::byte*>(view.data), static_cast<std::byte*>(view.data) + view.nbytes());
      view.data = copies.back().data();
      kept.emplace_back(name, view);
    }
    ASSERT_TRUE(write_safetensors(dir / "model.safetensors", kept).ok());
  }
  const auto model = Model::load(dir.string(), {});
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), StatusCode::kNotFound);
  EXPECT_NE(model.status().message().find("model.layers.1.mlp.gate_proj.weight"), std::string::npos);
}

TEST(Model, ShapeThatDisagreesWithConfigIsNamed) {
  const auto dir = copy_golden("llama-tiny", "bad_shape");
  std::string config;
  {
    std::ifstream in(dir / "config.json");
    config.assign(std::istreambuf_iterator<char>(in), {});
  }
  config.replace(config.find("\"intermediate_size\": 176"), 24, "\"intermediate_size\": 180");
  std::ofstream(dir / "config.json") << config;
  const auto model = Model::load(dir.string(), {});
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("gate_proj.weight' has shape [176, 64]"), std::string::npos)
      << model.status().message();
}

TEST(Model, UnknownSourceSaysWhatItTried) {
  const auto missing_dir = Model::load("/no/such/model", {});
  ASSERT_FALSE(missing_dir.ok());
  EXPECT_NE(missing_dir.status().message().find("does not exist"), std::string::npos);
  const auto unknown_preset = Model::load("gpt7", {});
  ASSERT_FALSE(unknown_preset.ok());
  EXPECT_NE(unknown_preset.status().message().find("presets:"), std::string::npos);
}

}  // namespace
}  // namespace djinn
