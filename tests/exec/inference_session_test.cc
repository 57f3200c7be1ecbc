#include "djinn/exec/inference_session.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "djinn/backend/cpu/cpu_backend.h"

namespace djinn {
namespace {

std::vector<int32_t> prompt_of(int n, int vocab) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back((i * 37 + 11) % vocab);
  return ids;
}

int32_t argmax_row(const std::vector<float>& logits, int64_t row, int64_t vocab) {
  const float* begin = logits.data() + row * vocab;
  return static_cast<int32_t>(std::max_element(begin, begin + vocab) - begin);
}

// Incremental decoding through the KV cache must agree with one full forward pass over
// the whole sequence: for every family and head layout (MHA, GQA, MQA).
class IncrementalEqualsFull : public ::testing::TestWithParam<std::string> {};

TEST_P(IncrementalEqualsFull, GreedyTokensAndLogits) {
  const auto model = *Model::load(GetParam(), {.dtype = DType::kF32, .seed = 3});
  const int64_t vocab = model->config().vocab_size;
  CpuBackend backend;
  const std::vector<int32_t> prompt = prompt_of(9, static_cast<int>(vocab));
  auto session = *InferenceSession::create(model, backend, 32);
  const GenerateResult generated = *session->generate(prompt, 12);
  ASSERT_EQ(generated.new_tokens.size(), 12u);
  EXPECT_EQ(session->length(), 9 + 11);  // the last token is produced, not yet fed back

  std::vector<int32_t> all = prompt;
  all.insert(all.end(), generated.new_tokens.begin(), generated.new_tokens.end());
  auto full = *InferenceSession::create(model, backend, 32);
  const ForwardResult forward = *full->forward(all, /*all_logits=*/true);
  ASSERT_EQ(forward.rows, static_cast<int64_t>(all.size()));
  for (size_t i = 0; i < generated.new_tokens.size(); ++i)
    EXPECT_EQ(argmax_row(forward.logits, static_cast<int64_t>(prompt.size() + i) - 1, vocab), generated.new_tokens[i])
        << "token " << i;
}

INSTANTIATE_TEST_SUITE_P(Presets, IncrementalEqualsFull, ::testing::Values("gpt2-tiny", "llama-tiny", "llama-tiny-mqa"));

TEST(InferenceSession, ChunkedPrefillEqualsOneShot) {
  const auto model = *Model::load("llama-tiny", {.seed = 5});
  CpuBackend backend;
  const std::vector<int32_t> prompt = prompt_of(12, 512);
  auto one_shot = *InferenceSession::create(model, backend, 16);
  const ForwardResult whole = *one_shot->forward(prompt);
  auto chunked = *InferenceSession::create(model, backend, 16);
  ASSERT_TRUE(chunked->forward(std::span(prompt).first(5)).ok());
  const ForwardResult rest = *chunked->forward(std::span(prompt).subspan(5));
  ASSERT_EQ(whole.logits.size(), rest.logits.size());
  for (size_t i = 0; i < whole.logits.size(); ++i) EXPECT_NEAR(whole.logits[i], rest.logits[i], 1e-5f);
  EXPECT_EQ(whole.next_token, rest.next_token);
}

TEST(InferenceSession, BadInputIsAnErrorAndChangesNothing) {
  const auto model = *Model::load("gpt2-tiny", {});
  CpuBackend backend;
  auto session = *InferenceSession::create(model, backend, 8);
  const std::vector<int32_t> out_of_vocab = {1, 2, 512};
  Result<ForwardResult> r = session->forward(out_of_vocab);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kOutOfRange);
  EXPECT_NE(r.status().message().find("512"), std::string::npos);
  EXPECT_EQ(session->length(), 0);

  const std::vector<int32_t> negative = {-1};
  EXPECT_FALSE(session->forward(negative).ok());
  EXPECT_FALSE(session->forward({}).ok());

  const std::vector<int32_t> too_long(9, 1);
  Result<ForwardResult> overflow = session->forward(too_long);
  ASSERT_FALSE(overflow.ok());
  EXPECT_NE(overflow.status().message().find("context of 8"), std::string::npos);
  EXPECT_FALSE(session->generate(std::vector<int32_t>(6, 1), 4).ok());
  EXPECT_EQ(session->length(), 0);

  EXPECT_FALSE(InferenceSession::create(model, backend, 129).ok());  // gpt2-tiny has 128 positions
  EXPECT_FALSE(InferenceSession::create(model, backend, 0).ok());
}

TEST(InferenceSession, KvCacheSizeFollowsTheModel) {
  const auto model = *Model::load("llama-tiny", {.dtype = DType::kBF16});
  CpuBackend backend;
  auto session = *InferenceSession::create(model, backend, 10);
  EXPECT_EQ(session->kv_bytes(), 10 * model->kv_bytes_per_token());
  const GenerateResult r = *session->generate(prompt_of(4, 512), 3);
  EXPECT_EQ(r.new_tokens.size(), 3u);
  for (int32_t t : r.new_tokens) EXPECT_TRUE(t >= 0 && t < 512);
}

}  // namespace
}  // namespace djinn
