#include "djinn/meta/meta_simulator.h"

#include <gtest/gtest.h>

#include "djinn/meta/plan_cache.h"
#include "djinn/models/model_graph.h"

namespace djinn {
namespace {

ModelGraph decode_graph(const std::string& preset, int64_t capacity = 64) {
  return build_model_graph(*preset_config(preset), {.phase = Phase::kDecode, .kv_capacity = capacity});
}
ModelGraph prefill_graph(const std::string& preset, int64_t capacity = 64) {
  return build_model_graph(*preset_config(preset), {.phase = Phase::kPrefill, .kv_capacity = capacity});
}

// Recomputes liveness independently and checks that no two activations that are live
// at the same time share stack bytes.
void expect_no_live_overlap(const Graph& graph, const Plan& plan) {
  const size_t n = graph.values().size();
  std::vector<int64_t> def(n, -1), last(n, -1);
  for (size_t step = 0; step < graph.nodes().size(); ++step) {
    const Node& node = graph.nodes()[step];
    def[static_cast<size_t>(node.output)] = static_cast<int64_t>(step);
    for (ValueId in : node.inputs) last[static_cast<size_t>(in)] = static_cast<int64_t>(step);
  }
  for (ValueId out : graph.outputs()) last[static_cast<size_t>(out)] = static_cast<int64_t>(graph.nodes().size());
  for (size_t a = 0; a < n; ++a) {
    const ValuePlacement& pa = plan.placements[a];
    if (pa.kind != Placement::kStack) continue;
    EXPECT_LE(pa.offset + pa.bytes, plan.stack_peak_bytes);
    EXPECT_EQ(pa.offset % 64, 0u);
    for (size_t b = a + 1; b < n; ++b) {
      const ValuePlacement& pb = plan.placements[b];
      if (pb.kind != Placement::kStack) continue;
      const bool live_together = def[a] <= std::max(last[b], def[b]) && def[b] <= std::max(last[a], def[a]);
      const bool bytes_overlap = pa.offset < pb.offset + pb.bytes && pb.offset < pa.offset + pa.bytes;
      EXPECT_FALSE(live_together && bytes_overlap) << graph.value(static_cast<ValueId>(a)).name << " and "
                                                   << graph.value(static_cast<ValueId>(b)).name;
    }
  }
}

TEST(MetaSimulator, StackOffsetsNeverOverlapWhileLive) {
  for (const char* preset : {"gpt2-tiny", "llama-tiny", "llama-tiny-mqa"}) {
    const ModelGraph decode = decode_graph(preset);
    const Plan plan = *simulate(decode.graph, {.seq = 1, .past = 10});
    expect_no_live_overlap(decode.graph, plan);
    const ModelGraph prefill = prefill_graph(preset);
    const Plan prefill_plan = *simulate(prefill.graph, {.seq = 13, .past = 0});
    expect_no_live_overlap(prefill.graph, prefill_plan);
  }
}

TEST(MetaSimulator, PeakIsBetweenTheLargestActivationAndTheirSum) {
  const ModelGraph g = prefill_graph("gpt2-tiny");
  const Plan plan = *simulate(g.graph, {.seq = 16, .past = 0});
  size_t largest = 0, sum = 0;
  for (const ValuePlacement& p : plan.placements) {
    if (p.kind != Placement::kStack) continue;
    largest = std::max(largest, p.bytes);
    sum += p.bytes;
  }
  EXPECT_GE(plan.stack_peak_bytes, largest);
  EXPECT_LT(plan.stack_peak_bytes, sum / 4);  // reuse is real: far below keeping everything
  // The MLP activation [16, 256] f32 is the largest.
  EXPECT_EQ(largest, 16u * 256 * 4);
}

TEST(MetaSimulator, KvBytesAndFlopsFollowTheModel) {
  const ModelConfig config = *preset_config("llama-tiny");
  const ModelGraph g = decode_graph("llama-tiny");
  const Plan plan = *simulate(g.graph, {.seq = 1, .past = 20});
  EXPECT_EQ(plan.kv_bytes_appended, config.kv_bytes_per_token(DType::kF32));
  double matmul_params = 0;
  for (const WeightSpec& w : g.weights)
    if (w.shape.size() == 2 && w.name != "model.embed_tokens.weight") matmul_params += static_cast<double>(num_elements(w.shape));
  const double attention = 4.0 * 21 * static_cast<double>(config.n_heads * config.head_dim) * static_cast<double>(config.n_layers);
  EXPECT_GE(plan.flops, 2 * matmul_params + attention);
  EXPECT_LT(plan.flops, 1.1 * (2 * matmul_params + attention));
  EXPECT_GT(plan.bytes_moved, matmul_params * 4);  // every weight is read once
}

TEST(MetaSimulator, BucketsRoundSeqUpAndIgnorePastForDecode) {
  const ModelGraph prefill = prefill_graph("gpt2-tiny");
  EXPECT_EQ(plan_key(prefill.graph, {.seq = 5, .past = 0}).seq_bucket, 8);
  EXPECT_EQ(plan_key(prefill.graph, {.seq = 8, .past = 0}).seq_bucket, 8);
  EXPECT_EQ(plan_key(prefill.graph, {.seq = 9, .past = 3}).seq_bucket, 16);
  const ModelGraph decode = decode_graph("gpt2-tiny");
  EXPECT_EQ(plan_key(decode.graph, {.seq = 1, .past = 3}), plan_key(decode.graph, {.seq = 1, .past = 99}));
  EXPECT_EQ(plan_key(decode.graph, {.seq = 1, .past = 3}).past_bucket, 0);
}

TEST(MetaSimulator, ActivationsThatDependOnPastBucketPastToo) {
  Graph g(Phase::kDecode);
  const ValueId x = g.add_io_input("x", DType::kF32, {Symbol::kTotal, 4});
  g.mark_output(g.add_node(OpKind::kGeluNew, {g.add_node(OpKind::kSilu, {x})}));
  EXPECT_TRUE(g.activations_depend_on_past());
  EXPECT_EQ(plan_key(g, {.seq = 1, .past = 5}).past_bucket, 8);
  const Plan plan = *simulate(g, {.seq = 1, .past = 5});
  // Sized for total = 1 + 8 rows at the bucket.
  EXPECT_EQ(plan.placements[1].bytes, 192u);  // 9 x 4 f32 = 144 bytes, rounded up to 64
}

TEST(PlanCache, StatsAreExact) {
  PlanCache cache(/*max_entries=*/2);
  const ModelGraph a = prefill_graph("gpt2-tiny");
  const ModelGraph b = decode_graph("gpt2-tiny");
  ASSERT_TRUE(cache.get(a.graph, {.seq = 1, .past = 0}).ok());  // miss: (a, 1)
  ASSERT_TRUE(cache.get(a.graph, {.seq = 1, .past = 0}).ok());  // hit
  ASSERT_TRUE(cache.get(a.graph, {.seq = 3, .past = 0}).ok());  // miss: (a, 4)
  ASSERT_TRUE(cache.get(a.graph, {.seq = 4, .past = 0}).ok());  // hit
  ASSERT_TRUE(cache.get(b.graph, {.seq = 1, .past = 7}).ok());  // miss: evicts (a, 1), the least recent
  ASSERT_TRUE(cache.get(b.graph, {.seq = 1, .past = 8}).ok());  // hit: decode ignores past
  ASSERT_TRUE(cache.get(a.graph, {.seq = 1, .past = 0}).ok());  // miss again: evicts (a, 4)
  PlanCacheStats s = cache.stats();
  EXPECT_EQ(s.hits, 3u);
  EXPECT_EQ(s.misses, 4u);
  EXPECT_EQ(s.evictions, 2u);
  EXPECT_EQ(s.entries, 2u);
  EXPECT_GT(s.build_us_total, 0.0);
  EXPECT_GT(s.lookup_ns, 0.0);
  EXPECT_DOUBLE_EQ(s.hit_rate(), 3.0 / 7.0);

  cache.clear();
  EXPECT_EQ(cache.stats().entries, 0u);
  ASSERT_TRUE(cache.get(b.graph, {.seq = 1, .past = 1}).ok());
  EXPECT_EQ(cache.stats().misses, 5u);
}

TEST(PlanCache, HandsOutTheSamePlanOnAHitAndAFreshOneWhenDisabled) {
  PlanCache cache;
  const ModelGraph g = decode_graph("llama-tiny");
  const auto first = *cache.get(g.graph, {.seq = 1, .past = 1});
  const auto second = *cache.get(g.graph, {.seq = 1, .past = 2});
  EXPECT_EQ(first.get(), second.get());
  cache.set_enabled(false);
  const auto third = *cache.get(g.graph, {.seq = 1, .past = 3});
  const auto fourth = *cache.get(g.graph, {.seq = 1, .past = 3});
  EXPECT_NE(third.get(), fourth.get());
  EXPECT_EQ(third->stack_peak_bytes, first->stack_peak_bytes);
  EXPECT_EQ(cache.stats().entries, 0u);
  EXPECT_EQ(cache.stats().misses, 3u);
  EXPECT_EQ(cache.stats().hits, 1u);
}

}  // namespace
}  // namespace djinn
