// End-to-end against the Hugging Face fixtures in tests/golden (see its README):
// the same greedy tokens and max |logit error| <= 1e-4 in f32.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "golden/golden_expected.h"
#include "djinn/backend/cpu/cpu_backend.h"
#include "djinn/exec/inference_session.h"
#include "djinn/models/model.h"
#include "djinn/models/safetensors.h"

namespace djinn {
namespace {

using golden::Expected;
using golden::read_expected;

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, GreedyTokensAndLogitsMatchTransformers) {
  const std::filesystem::path dir = std::filesystem::path(DJINN_GOLDEN_DIR) / GetParam();
  const Expected expected = read_expected(dir);
  const auto model = Model::load(dir.string(), {.dtype = DType::kF32});
  ASSERT_TRUE(model.ok()) << model.status().to_string();
  CpuBackend backend;

  const int64_t n_new = static_cast<int64_t>(expected.generated_ids.size() - expected.input_ids.size());
  auto session = *InferenceSession::create(*model, backend, static_cast<int64_t>(expected.generated_ids.size()));
  const GenerateResult generated = *session->generate(expected.input_ids, n_new);
  std::vector<int32_t> ids = expected.input_ids;
  ids.insert(ids.end(), generated.new_tokens.begin(), generated.new_tokens.end());
  EXPECT_EQ(ids, expected.generated_ids);

  auto fresh = *InferenceSession::create(*model, backend, static_cast<int64_t>(ids.size()));
  const ForwardResult forward = *fresh->forward(expected.generated_ids, /*all_logits=*/true);
  ASSERT_EQ(forward.logits.size(), expected.logits.size());
  float max_error = 0.0f;
  for (size_t i = 0; i < forward.logits.size(); ++i) {
    ASSERT_FALSE(std::isnan(forward.logits[i])) << i;
    max_error = std::max(max_error, std::fabs(forward.logits[i] - expected.logits[i]));
  }
  EXPECT_LE(max_error, 1e-4f);
  RecordProperty("max_logit_error", std::to_string(max_error));
}

TEST_P(GoldenTest, HalfStorageKeepsTheTokens) {
  // f16 weights + KV with f32 accumulation stay close enough for these well-separated logits.
  const std::filesystem::path dir = std::filesystem::path(DJINN_GOLDEN_DIR) / GetParam();
  const Expected expected = read_expected(dir);
  const auto model = *Model::load(dir.string(), {.dtype = DType::kF16});
  CpuBackend backend;
  auto session = *InferenceSession::create(model, backend, static_cast<int64_t>(expected.generated_ids.size()));
  const GenerateResult generated = *session->generate(expected.input_ids, 8);
  const std::vector<int32_t> want(expected.generated_ids.begin() + static_cast<int64_t>(expected.input_ids.size()),
                                  expected.generated_ids.begin() + static_cast<int64_t>(expected.input_ids.size()) + 8);
  EXPECT_EQ(generated.new_tokens, want);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenTest, ::testing::Values("gpt2-tiny", "llama-tiny"));

}  // namespace
}  // namespace djinn
