#include "djinn/sched/swap_policy.h"

#include <gtest/gtest.h>

namespace djinn {
namespace {

using Action = SwapDecision::Action;

std::vector<std::pair<Action, int64_t>> flat(const std::vector<SwapDecision>& decisions) {
  std::vector<std::pair<Action, int64_t>> out;
  for (const SwapDecision& d : decisions) out.emplace_back(d.action, d.session);
  return out;
}

TEST(SwapPolicy, ProactiveSwapsOutOnIoWaitAndPrefetchesBeforeTheResumeTime) {
  SwapPolicy policy(SwapPolicyKind::kProactive, /*idle_timeout_s=*/30, /*swap_in_gbps_guess=*/1.0);
  policy.session_opened(1, 0.0);
  policy.set_kv_bytes(1, 100'000'000);  // 0.1 s at 1 GB/s, + 20 ms slack
  EXPECT_TRUE(policy.decide(0.5).empty());
  policy.signal_io_wait(1, 1.0, /*estimated_resume_ms=*/2000);  // resumes at t = 3.0
  EXPECT_EQ(flat(policy.decide(1.0)), (std::vector<std::pair<Action, int64_t>>{{Action::kSwapOut, 1}}));
  EXPECT_TRUE(policy.decide(1.0).empty());  // reported once
  policy.swapped_out(1);
  EXPECT_DOUBLE_EQ(policy.swap_in_margin(1), 0.120);
  EXPECT_TRUE(policy.decide(2.80).empty());
  EXPECT_TRUE(policy.decide(2.879).empty());
  EXPECT_EQ(flat(policy.decide(2.881)), (std::vector<std::pair<Action, int64_t>>{{Action::kSwapIn, 1}}));
  EXPECT_TRUE(policy.decide(2.9).empty());
}

TEST(SwapPolicy, ProactiveComputeBringsASessionBackAtOnce) {
  SwapPolicy policy(SwapPolicyKind::kProactive, 30);
  policy.session_opened(4, 0.0);
  policy.signal_io_wait(4, 1.0, std::nullopt);  // no estimate: out now, in on COMPUTE
  EXPECT_EQ(flat(policy.decide(1.0)).size(), 1u);
  policy.swapped_out(4);
  EXPECT_TRUE(policy.decide(100.0).empty());  // waits as long as the tool runs
  policy.signal_compute(4, 100.0);
  EXPECT_EQ(flat(policy.decide(100.0)), (std::vector<std::pair<Action, int64_t>>{{Action::kSwapIn, 4}}));
}

TEST(SwapPolicy, ProactiveKeepsASessionWhoseResumeIsTooCloseToSwap) {
  SwapPolicy policy(SwapPolicyKind::kProactive, 30, 1.0);
  policy.session_opened(2, 0.0);
  policy.set_kv_bytes(2, 1'000'000'000);         // 1 s to bring back
  policy.signal_io_wait(2, 10.0, /*ms=*/500);    // back in 0.5 s: swapping would only delay it
  EXPECT_TRUE(policy.decide(10.0).empty());
}

TEST(SwapPolicy, ReactiveIgnoresSignalsAndSwapsIdleSessions) {
  SwapPolicy policy(SwapPolicyKind::kReactive, /*idle_timeout_s=*/5);
  policy.session_opened(1, 0.0);
  policy.session_opened(2, 0.0);
  policy.signal_io_wait(1, 1.0, 60000);
  policy.session_ran(2, 3.0);
  EXPECT_TRUE(policy.decide(4.9).empty());  // 1 was active at 1.0, 2 at 3.0
  EXPECT_EQ(flat(policy.decide(6.1)), (std::vector<std::pair<Action, int64_t>>{{Action::kSwapOut, 1}}));
  EXPECT_EQ(flat(policy.decide(8.1)), (std::vector<std::pair<Action, int64_t>>{{Action::kSwapOut, 2}}));
  policy.swapped_out(1);
  policy.signal_compute(1, 9.0);
  EXPECT_TRUE(policy.decide(9.0).empty());  // no prefetch: the next step swaps in implicitly
}

TEST(SwapPolicy, NoneNeverSwapsAndLruEvictsTheLeastRecentlyUsed) {
  SwapPolicy none(SwapPolicyKind::kNone, 1);
  none.session_opened(1, 0.0);
  none.signal_io_wait(1, 0.0, 10);
  EXPECT_TRUE(none.decide(1000.0).empty());

  SwapPolicy lru(SwapPolicyKind::kLru, 1);
  EXPECT_FALSE(lru.eviction_candidate().has_value());
  lru.session_opened(1, 0.0);
  lru.session_opened(2, 0.0);
  lru.session_opened(3, 0.0);
  lru.session_ran(1, 5.0);
  lru.session_ran(2, 2.0);
  lru.session_ran(3, 7.0);
  EXPECT_TRUE(lru.decide(100.0).empty());
  EXPECT_EQ(lru.eviction_candidate(), 2);
  lru.swapped_out(2);
  EXPECT_EQ(lru.eviction_candidate(), 1);
}

TEST(SwapPolicy, MeasuredSwapInSpeedMovesTheMargin) {
  SwapPolicy policy(SwapPolicyKind::kProactive, 30, /*guess=*/1.0);
  policy.session_opened(1, 0);
  policy.set_kv_bytes(1, 1'000'000'000);
  const double before = policy.swap_in_margin(1);
  for (int i = 0; i < 20; ++i) policy.swapped_in(1, 1'000'000'000, 0.1);  // 10 GB/s measured
  EXPECT_LT(policy.swap_in_margin(1), before / 5);
  EXPECT_NEAR(policy.swap_in_bytes_per_second(), 10e9, 1e9);
  EXPECT_EQ(parse_swap_policy("lru").value(), SwapPolicyKind::kLru);
  EXPECT_FALSE(parse_swap_policy("fifo").ok());
}

}  // namespace
}  // namespace djinn
