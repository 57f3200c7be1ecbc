#include "djinn/runtime/runtime.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <random>

#include "djinn/backend/cpu/cpu_backend.h"

namespace djinn {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;

std::unique_ptr<Runtime> make_runtime(double device_mem_gb = 0.25, double arena_mb = 0) {
  RuntimeOptions options;
  options.device_mem_gb = device_mem_gb;
  options.arena_mb = arena_mb;
  Result<std::unique_ptr<Runtime>> runtime = Runtime::create(options);
  EXPECT_TRUE(runtime.ok()) << runtime.status().to_string();
  return std::move(runtime).value();
}

std::vector<int32_t> prompt_of(int n, int vocab, int salt = 0) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back((i * 37 + 11 + salt * 101) % vocab);
  return ids;
}

// The planned path (VMU + plan cache + executor) must equal the direct path
// (interpreter) bit for bit: same kernels, same order, same inputs.
class PlannedEqualsDirect : public ::testing::TestWithParam<std::tuple<std::string, DType, bool>> {};

TEST_P(PlannedEqualsDirect, LogitsAndTokensBitForBit) {
  const auto& [source, dtype, cache_enabled] = GetParam();
  auto runtime = make_runtime();
  runtime->plan_cache().set_enabled(cache_enabled);
  LoadOptions load;
  load.dtype = dtype;
  load.seed = 11;
  const ModelId model_id = *runtime->load_model(source, load);
  const auto model = *runtime->model(model_id);
  const std::vector<int32_t> prompt = prompt_of(7, static_cast<int>(model->config().vocab_size));

  const SessionId planned = *runtime->open_session(model_id, 24);
  const GenerateResult planned_tokens = *runtime->generate(planned, prompt, 10);
  CpuBackend backend;
  auto direct = *InferenceSession::create(model, backend, 24);
  const GenerateResult direct_tokens = *direct->generate(prompt, 10);
  EXPECT_EQ(planned_tokens.new_tokens, direct_tokens.new_tokens);

  std::vector<int32_t> all = prompt;
  all.insert(all.end(), planned_tokens.new_tokens.begin(), planned_tokens.new_tokens.end());
  ASSERT_TRUE(runtime->close_session(planned).ok());
  const SessionId planned_full = *runtime->open_session(model_id, 24);
  const ForwardResult a = *runtime->forward(planned_full, all, /*all_logits=*/true);
  auto direct_full = *InferenceSession::create(model, backend, 24);
  const ForwardResult b = *direct_full->forward(all, /*all_logits=*/true);
  ASSERT_EQ(a.logits.size(), b.logits.size());
  EXPECT_EQ(std::memcmp(a.logits.data(), b.logits.data(), a.logits.size() * sizeof(float)), 0);
  EXPECT_TRUE(runtime->vmu().check_invariants().ok()) << runtime->vmu().check_invariants().to_string();
}

INSTANTIATE_TEST_SUITE_P(
    Models, PlannedEqualsDirect,
    ::testing::Values(std::make_tuple("gpt2-tiny", DType::kF32, true), std::make_tuple("llama-tiny", DType::kF32, true),
                      std::make_tuple("llama-tiny-mqa", DType::kF16, true), std::make_tuple("llama-tiny", DType::kBF16, true),
                      std::make_tuple("gpt2-tiny", DType::kF32, false), std::make_tuple("llama-tiny", DType::kF32, false),
                      std::make_tuple(DJINN_GOLDEN_DIR "/llama-tiny", DType::kF32, true)));

TEST(Runtime, AModelLoadedTwiceOccupiesTextOnce) {
  auto runtime = make_runtime();
  const ModelId first = *runtime->load_model("gpt2-tiny");
  const size_t text_after_one = runtime->vmu().text().stats().used;
  const size_t free_after_one = runtime->vmu().region().free_bytes();
  const ModelId second = *runtime->load_model("gpt2-tiny");
  EXPECT_EQ(first, second);
  EXPECT_EQ(runtime->vmu().text().stats().used, text_after_one);
  EXPECT_EQ(runtime->vmu().region().free_bytes(), free_after_one);
  EXPECT_EQ(runtime->vmu().text().models(), 1u);
  EXPECT_EQ(text_after_one, (*runtime->model(first))->weight_bytes());
  // Another dtype is another model.
  LoadOptions half;
  half.dtype = DType::kF16;
  const ModelId third = *runtime->load_model("gpt2-tiny", half);
  EXPECT_NE(third, first);
  EXPECT_EQ(runtime->vmu().text().models(), 2u);
  // Unloading drops Text only when the last reference goes.
  ASSERT_TRUE(runtime->unload_model(first).ok());
  EXPECT_EQ(runtime->vmu().text().models(), 2u);
  ASSERT_TRUE(runtime->unload_model(first).ok());
  EXPECT_EQ(runtime->vmu().text().models(), 1u);
  EXPECT_FALSE(runtime->unload_model(first).ok());
}

TEST(Runtime, TwoSessionsKvNeverOverlap) {
  auto runtime = make_runtime();
  const ModelId model = *runtime->load_model("llama-tiny");
  const SessionId a = *runtime->open_session(model, 32);
  const SessionId b = *runtime->open_session(model, 32);
  InferenceSession& sa = **runtime->session(a);
  InferenceSession& sb = **runtime->session(b);
  // Arenas are disjoint ranges of the region.
  const std::byte* a_begin = sa.arena()->base();
  const std::byte* b_begin = sb.arena()->base();
  EXPECT_TRUE(a_begin + sa.arena()->capacity() <= b_begin || b_begin + sb.arena()->capacity() <= a_begin);
  // Write a pattern into every KV byte of each, then check neither was touched by the other.
  for (const TensorView& v : sa.kv()) std::memset(v.data, 0xA5, v.nbytes());
  for (const TensorView& v : sb.kv()) std::memset(v.data, 0x5A, v.nbytes());
  auto all_bytes_are = [](const InferenceSession& s, unsigned char value) {
    for (const TensorView& v : s.kv())
      for (size_t i = 0; i < v.nbytes(); ++i)
        if (static_cast<const unsigned char*>(v.data)[i] != value) return false;
    return true;
  };
  EXPECT_TRUE(all_bytes_are(sa, 0xA5));
  EXPECT_TRUE(all_bytes_are(sb, 0x5A));
  for (const TensorView& v : sa.kv()) EXPECT_TRUE(v.data >= a_begin && static_cast<std::byte*>(v.data) + v.nbytes() <= a_begin + sa.arena()->capacity());
}

TEST(Runtime, InterleavedSessionsEqualSessionsAlone) {
  auto runtime = make_runtime();
  const ModelId model = *runtime->load_model("gpt2-tiny");
  const std::vector<int32_t> pa = prompt_of(5, 512, 1), pb = prompt_of(9, 512, 2);
  auto alone = [&](const std::vector<int32_t>& prompt) {
    const SessionId s = *runtime->open_session(model, 40);
    std::vector<int32_t> out = runtime->generate(s, prompt, 12)->new_tokens;
    EXPECT_TRUE(runtime->close_session(s).ok());
    return out;
  };
  const std::vector<int32_t> want_a = alone(pa), want_b = alone(pb);
  const SessionId a = *runtime->open_session(model, 40), b = *runtime->open_session(model, 40);
  int32_t ta = runtime->forward(a, pa)->next_token, tb = runtime->forward(b, pb)->next_token;
  std::vector<int32_t> got_a = {ta}, got_b = {tb};
  for (int i = 1; i < 12; ++i) {
    ta = runtime->forward(a, std::span(&ta, 1))->next_token;
    tb = runtime->forward(b, std::span(&tb, 1))->next_token;
    got_a.push_back(ta);
    got_b.push_back(tb);
  }
  EXPECT_EQ(got_a, want_a);
  EXPECT_EQ(got_b, want_b);
}

TEST(Runtime, ClosedSessionArenasAreReused) {
  auto runtime = make_runtime();
  const ModelId model = *runtime->load_model("gpt2-tiny");
  const SessionId first = *runtime->open_session(model, 16);
  const std::byte* base = (*runtime->session(first))->arena()->base();
  const size_t region_free = runtime->vmu().region().free_bytes();
  ASSERT_TRUE(runtime->close_session(first).ok());
  const SessionId second = *runtime->open_session(model, 16);
  EXPECT_EQ((*runtime->session(second))->arena()->base(), base);
  EXPECT_EQ(runtime->vmu().region().free_bytes(), region_free);
  EXPECT_EQ(runtime->vmu().data().stats().arenas_reused, 1u);
  EXPECT_FALSE(runtime->close_session(first).ok());  // already closed
  EXPECT_FALSE(runtime->forward(first, prompt_of(2, 512)).ok());
}

TEST(Runtime, OutOfMemoryIsAStatusThatSaysWhoAskedForWhat) {
  // 4 MiB: gpt2-tiny (0.5 MiB of weights) fits, gpt2 (475 MiB) does not.
  auto runtime = make_runtime(4.0 / 1024, /*arena_mb=*/1.5);
  Result<ModelId> big = runtime->load_model("gpt2");
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), StatusCode::kOutOfMemory);
  EXPECT_NE(big.status().message().find("Text segment: model gpt2"), std::string::npos) << big.status().message();
  const ModelId small = *runtime->load_model("gpt2-tiny");
  // 1.5 MiB arenas: two fit beside the weights, the third does not.
  ASSERT_TRUE(runtime->open_session(small, 64).ok());
  ASSERT_TRUE(runtime->open_session(small, 64).ok());
  Result<SessionId> third = runtime->open_session(small, 64);
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.status().code(), StatusCode::kOutOfMemory);
  EXPECT_NE(third.status().message().find("Data segment: session 3"), std::string::npos) << third.status().message();
  // A session that needs more than an arena holds: out of range, not out of memory.
  auto tight = make_runtime(0.25, /*arena_mb=*/0.01);
  const ModelId m = *tight->load_model("gpt2-tiny");
  Result<SessionId> too_long = tight->open_session(m, 128);
  ASSERT_FALSE(too_long.ok());
  EXPECT_EQ(too_long.status().code(), StatusCode::kOutOfRange);  // no arena will ever hold it: not worth waiting for
  EXPECT_NE(too_long.status().message().find("session arena is"), std::string::npos);
  EXPECT_TRUE(runtime->vmu().check_invariants().ok());
}

TEST(Runtime, ArenaSizeFromTheEnvironment) {
  ::setenv("GENIE_VMU_SESSION_ARENA_MB", "2", 1);
  auto runtime = make_runtime();
  ::unsetenv("GENIE_VMU_SESSION_ARENA_MB");
  EXPECT_EQ(runtime->vmu().data().arena_bytes(), static_cast<size_t>(2 * kMiB));
  const ModelId model = *runtime->load_model("gpt2-tiny");  // 1 KiB of KV per token
  const SessionId s = *runtime->open_session(model);       // as long as the arena allows, at most 128
  EXPECT_EQ((*runtime->session(s))->capacity(), 128);
  ::setenv("GENIE_VMU_SESSION_ARENA_MB", "lots", 1);
  EXPECT_FALSE(Runtime::create(RuntimeOptions{.device_mem_gb = 0.1}).ok());
  ::unsetenv("GENIE_VMU_SESSION_ARENA_MB");
}

TEST(Runtime, DefaultArenaIsTheFirstSessionsNeed) {
  auto runtime = make_runtime();
  const ModelId model = *runtime->load_model("llama-tiny");
  const SessionId s = *runtime->open_session(model, 40);
  EXPECT_EQ(runtime->vmu().data().arena_bytes(), 40 * (*runtime->model(model))->kv_bytes_per_token());
  EXPECT_EQ(runtime->vmu().data().stats().internal_fragmentation, 0.0);
  (void)s;
}

TEST(Runtime, ReservesThePrefillStackWhenAModelLoads) {
  RuntimeOptions options;
  options.device_mem_gb = 0.25;
  options.reserve_prefill_tokens = 48;
  auto runtime = *Runtime::create(options);
  EXPECT_EQ(runtime->vmu().stack().stats().capacity, 0u);
  const ModelId model = *runtime->load_model("gpt2-tiny");
  const size_t reserved = runtime->vmu().stack().stats().capacity;
  EXPECT_GT(reserved, 0u);
  // A first prompt of that length finds its activation memory there: the stack does not grow.
  const SessionId s = *runtime->open_session(model, 64);
  const int64_t vocab = (*runtime->model(model))->config().vocab_size;
  ASSERT_TRUE(runtime->forward(s, prompt_of(48, static_cast<int>(vocab))).ok());
  EXPECT_EQ(runtime->vmu().stack().stats().capacity, reserved);
  // Without the option nothing is reserved up front.
  auto lazy = make_runtime();
  (void)*lazy->load_model("gpt2-tiny");
  EXPECT_EQ(lazy->vmu().stack().stats().capacity, 0u);
}

TEST(Runtime, RunsAnArbitrarySmallGraph) {
  auto runtime = make_runtime();
  Graph g(Phase::kPrefill);
  const ValueId a = g.add_io_input("a", DType::kF32, {1, 1});
  const ValueId b = g.add_io_input("b", DType::kF32, {1, 1});
  g.mark_output(g.add_node(OpKind::kAdd, {a, b}));
  float x = 1.5f, y = 2.25f;
  const TensorView inputs[] = {TensorView::contiguous(&x, {1, 1}, DType::kF32), TensorView::contiguous(&y, {1, 1}, DType::kF32)};
  for (int i = 0; i < 3; ++i) {
    Result<std::vector<HostTensor>> out = runtime->run_graph(g, inputs, {.seq = 1, .past = 0});
    ASSERT_TRUE(out.ok()) << out.status().to_string();
    ASSERT_EQ(out->size(), 1u);
    EXPECT_EQ((*out)[0].shape, (Shape{1, 1}));
    EXPECT_EQ((*out)[0].as<float>()[0], 3.75f + static_cast<float>(i));
    x += 1.0f;  // new input values, same graph: the plan is reused
  }
  EXPECT_EQ(runtime->plan_cache().stats().misses, 1u);
  EXPECT_EQ(runtime->plan_cache().stats().hits, 2u);
  // Wrong number or shape of inputs: an error, not a crash.
  EXPECT_FALSE(runtime->run_graph(g, std::span(inputs, 1), {.seq = 1, .past = 0}).ok());
  float wide[2] = {};
  const TensorView wrong[] = {TensorView::contiguous(wide, {1, 2}, DType::kF32), inputs[1]};
  EXPECT_FALSE(runtime->run_graph(g, wrong, {.seq = 1, .past = 0}).ok());
  EXPECT_EQ(runtime->vmu().stack().stats().used, 0u);
}

TEST(Runtime, RandomOpenGenerateCloseKeepsEveryInvariant) {
  auto runtime = make_runtime(0.25, /*arena_mb=*/0.1);
  const ModelId model = *runtime->load_model("llama-tiny");
  std::mt19937 rng(42);
  std::vector<SessionId> open;
  for (int op = 0; op < 200; ++op) {
    const int what = static_cast<int>(rng() % 3);
    if (what == 0 || open.empty()) {
      Result<SessionId> s = runtime->open_session(model, 48);
      if (s.ok()) open.push_back(*s);
    } else if (what == 1) {
      const SessionId s = open[rng() % open.size()];
      InferenceSession& session = **runtime->session(s);
      if (session.length() + 3 <= session.capacity()) {
        ASSERT_TRUE(runtime->forward(s, prompt_of(3, 512, op)).ok());
      }
    } else {
      const size_t at = rng() % open.size();
      ASSERT_TRUE(runtime->close_session(open[at]).ok());
      open.erase(open.begin() + static_cast<std::ptrdiff_t>(at));
    }
    ASSERT_TRUE(runtime->vmu().check_invariants().ok()) << runtime->vmu().check_invariants().to_string();
    EXPECT_EQ(runtime->vmu().stack().stats().used, 0u);
    EXPECT_EQ(runtime->vmu().data().stats().arenas_live, open.size());
  }
}

}  // namespace
}  // namespace djinn
