#include <gtest/gtest.h>

#include <random>

#include "djinn/runtime/runtime.h"

namespace djinn {
namespace {

std::unique_ptr<Runtime> make_runtime() {
  RuntimeOptions options;
  options.device_mem_gb = 0.25;
  options.arena_mb = 0.5;
  return *Runtime::create(options);
}

// Sessions at ragged lengths decode together; every session's tokens equal what it
// produces decoding alone.
class BatchedDecode : public ::testing::TestWithParam<std::string> {};

TEST_P(BatchedDecode, EqualsEachSessionAlone) {
  auto runtime = make_runtime();
  const ModelId model = *runtime->load_model(GetParam(), LoadOptions{.dtype = DType::kF32, .seed = 5});
  const int64_t vocab = (*runtime->model(model))->config().vocab_size;
  std::mt19937 rng(11);
  constexpr int kSessions = 6, kSteps = 10;
  std::vector<SessionId> batched, alone;
  std::vector<int32_t> next_batched, next_alone;
  for (int i = 0; i < kSessions; ++i) {
    std::vector<int32_t> prompt(1 + rng() % 20);
    for (int32_t& t : prompt) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
    batched.push_back(*runtime->open_session(model, 64));
    alone.push_back(*runtime->open_session(model, 64));
    next_batched.push_back(runtime->forward(batched.back(), prompt)->next_token);
    next_alone.push_back(runtime->forward(alone.back(), prompt)->next_token);
  }
  for (int step = 0; step < kSteps; ++step) {
    Result<std::vector<ForwardResult>> results = runtime->decode_batch(batched, next_batched);
    ASSERT_TRUE(results.ok()) << results.status().to_string();
    for (int i = 0; i < kSessions; ++i) {
      const ForwardResult single = *runtime->forward(alone[static_cast<size_t>(i)], std::span(&next_alone[static_cast<size_t>(i)], 1));
      const ForwardResult& together = (*results)[static_cast<size_t>(i)];
      EXPECT_EQ(together.next_token, single.next_token) << "session " << i << " step " << step;
      float max_diff = 0;
      for (size_t j = 0; j < single.logits.size(); ++j)
        max_diff = std::max(max_diff, std::fabs(single.logits[j] - together.logits[j]));
      EXPECT_LT(max_diff, 1e-4f);
      next_batched[static_cast<size_t>(i)] = together.next_token;
      next_alone[static_cast<size_t>(i)] = single.next_token;
    }
  }
  for (int i = 0; i < kSessions; ++i)
    EXPECT_EQ((*runtime->session(batched[static_cast<size_t>(i)]))->length(),
              (*runtime->session(alone[static_cast<size_t>(i)]))->length());
  EXPECT_TRUE(runtime->vmu().check_invariants().ok());
}

INSTANTIATE_TEST_SUITE_P(Presets, BatchedDecode, ::testing::Values("gpt2-tiny", "llama-tiny", "llama-tiny-mqa"));

TEST(BatchedDecode, RefusesMixedBatchesAndBadInput) {
  auto runtime = make_runtime();
  const ModelId a = *runtime->load_model("gpt2-tiny");
  const ModelId b = *runtime->load_model("llama-tiny");
  const SessionId sa = *runtime->open_session(a, 32), sb = *runtime->open_session(b, 32);
  const SessionId sa_short = *runtime->open_session(a, 16);
  const std::vector<int32_t> two = {1, 2};
  EXPECT_FALSE(runtime->decode_batch(std::vector<SessionId>{sa, sb}, two).ok());        // two models
  EXPECT_FALSE(runtime->decode_batch(std::vector<SessionId>{sa, sa_short}, two).ok());  // two capacities
  EXPECT_FALSE(runtime->decode_batch(std::vector<SessionId>{sa, sa}, two).ok());        // one session twice
  EXPECT_FALSE(runtime->decode_batch(std::vector<SessionId>{sa}, two).ok());            // counts differ
  const SessionId sa2 = *runtime->open_session(a, 32);
  EXPECT_FALSE(runtime->decode_batch(std::vector<SessionId>{sa, sa2}, std::vector<int32_t>{1, 9999}).ok());  // vocab
  EXPECT_EQ((*runtime->session(sa))->length(), 0);
  ASSERT_TRUE(runtime->decode_batch(std::vector<SessionId>{sa, sa2}, two).ok());
  EXPECT_EQ((*runtime->session(sa))->length(), 1);
}

TEST(BatchedDecode, TokensOnlyStepsGiveTheSameTokensWithoutLogits) {
  auto runtime = make_runtime();
  const ModelId model = *runtime->load_model("llama-tiny");
  std::vector<SessionId> with, without;
  for (int i = 0; i < 2; ++i) {
    with.push_back(*runtime->open_session(model, 32));
    without.push_back(*runtime->open_session(model, 32));
  }
  std::vector<int32_t> a = {3, 40}, b = a;
  for (int step = 0; step < 4; ++step) {
    const std::vector<ForwardResult> full = *runtime->decode_batch(with, a);
    const std::vector<ForwardResult> lean = *runtime->decode_batch(without, b, /*with_logits=*/false);
    for (size_t i = 0; i < full.size(); ++i) {
      EXPECT_FALSE(full[i].logits.empty());
      EXPECT_TRUE(lean[i].logits.empty());
      EXPECT_EQ(lean[i].next_token, full[i].next_token);
      a[i] = full[i].next_token;
      b[i] = lean[i].next_token;
    }
  }
}

TEST(BatchedDecode, ASwappedSessionIsSwappedInForTheBatch) {
  RuntimeOptions options;
  options.device_mem_gb = 0.25;
  options.host_pool_gb = 0.01;
  auto runtime = *Runtime::create(options);
  const ModelId m = *runtime->load_model("llama-tiny");
  const SessionId x = *runtime->open_session(m, 32), y = *runtime->open_session(m, 32);
  ASSERT_TRUE(runtime->forward(x, std::vector<int32_t>{1, 2, 3}).ok());
  ASSERT_TRUE(runtime->forward(y, std::vector<int32_t>{4, 5}).ok());
  ASSERT_TRUE(runtime->swap_out(x).ok());
  ASSERT_TRUE(runtime->decode_batch(std::vector<SessionId>{x, y}, std::vector<int32_t>{7, 8}).ok());
  EXPECT_EQ((*runtime->session(x))->residency(), Residency::kResident);
  EXPECT_EQ((*runtime->session(x))->length(), 4);
}

}  // namespace
}  // namespace djinn
