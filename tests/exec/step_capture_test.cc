// The executor's step capture (Note [Step capture] in executor.h) on a CPU backend
// that captures the way a CUDA graph does: ops issued between begin_capture() and
// end_capture() are recorded, not run, and replay() runs the recording with the
// pointers it saw. Generation with capture must equal generation without, bit for
// bit, through sessions, batched decode and swaps that move a session's KV cache.
#include <gtest/gtest.h>

#include <cstring>
#include <map>

#include "djinn/backend/cpu/cpu_backend.h"
#include "djinn/runtime/runtime.h"
#include "runtime/runtime_pair.h"

namespace djinn {
namespace {

class RecordingCpuBackend final : public CpuBackend {
 public:
  // Like a GPU: io inputs are staged into the step's frame (fixed addresses), which is
  // what lets a step be captured at all.
  bool host_addressable() const override { return false; }
  bool supports_capture() const override { return true; }
  Status begin_capture() override {
    if (capturing_) return internal_error("already capturing");
    capturing_ = true;
    recording_.clear();
    return {};
  }
  Result<uint64_t> end_capture() override {
    capturing_ = false;
    const uint64_t id = next_id_++;
    captures_[id] = std::move(recording_);
    ++captured;
    return id;
  }
  void abort_capture() override {
    capturing_ = false;
    recording_.clear();
  }
  Result<bool> replay(uint64_t capture) override {
    auto it = captures_.find(capture);
    if (it == captures_.end() || drop_next_replay) {
      drop_next_replay = false;
      return false;
    }
    for (Recorded& r : it->second) {
      std::vector<const TensorView*> inputs;
      for (const TensorView& v : r.inputs) inputs.push_back(&v);
      DJINN_RETURN_IF_ERROR(CpuBackend::run_op(r.op, r.attrs, inputs, r.output, r.bindings));
    }
    ++replays;
    return true;
  }
  void release_capture(uint64_t capture) override { released += captures_.erase(capture); }
  Status run_op(OpKind op, const OpAttrs& attrs, std::span<const TensorView* const> inputs, const TensorView& output,
                const SymbolBindings& bindings) override {
    if (!capturing_) return CpuBackend::run_op(op, attrs, inputs, output, bindings);
    Recorded r{op, attrs, {}, output, bindings};
    for (const TensorView* in : inputs) r.inputs.push_back(*in);  // the pointers as they are now
    recording_.push_back(std::move(r));
    return {};
  }

  int captured = 0, replays = 0, released = 0;
  bool drop_next_replay = false;  // the next replay() reports the capture invalidated

 private:
  struct Recorded {
    OpKind op;
    OpAttrs attrs;
    std::vector<TensorView> inputs;
    TensorView output;
    SymbolBindings bindings;
  };
  bool capturing_ = false;
  std::vector<Recorded> recording_;
  std::map<uint64_t, std::vector<Recorded>> captures_;
  uint64_t next_id_ = 1;
};

using Runtimes = test_support::RuntimePair<RecordingCpuBackend>;
Runtimes make_runtimes() { return test_support::make_runtime_pair<RecordingCpuBackend>(); }
using test_support::prompt_of;

TEST(StepCapture, DecodeStepsAreCapturedOnceThenReplayedWithIdenticalResults) {
  Runtimes r = make_runtimes();
  const ModelId a = *r.plain->load_model("llama-tiny"), b = *r.tested->load_model("llama-tiny");
  const int64_t vocab = (*r.plain->model(a))->config().vocab_size;
  const SessionId sa = *r.plain->open_session(a, 40), sb = *r.tested->open_session(b, 40);
  const std::vector<int32_t> prompt = prompt_of(5, vocab);
  const GenerateResult ga = *r.plain->generate(sa, prompt, 12);
  Result<GenerateResult> gb = r.tested->generate(sb, prompt, 12);
  ASSERT_TRUE(gb.ok()) << gb.status().to_string();
  EXPECT_EQ(ga.new_tokens, gb->new_tokens);
  // 11 decode steps: the first runs, the second is captured, the rest replay it.
  EXPECT_EQ(r.backend->captured, 1);
  EXPECT_EQ(r.backend->replays, 10);
  // Logits of a replayed step equal the plain step bit for bit.
  const int32_t next = ga.new_tokens.back();
  const ForwardResult fa = *r.plain->forward(sa, std::vector<int32_t>{next});
  const ForwardResult fb = *r.tested->forward(sb, std::vector<int32_t>{next});
  EXPECT_EQ(std::memcmp(fa.logits.data(), fb.logits.data(), fa.logits.size() * sizeof(float)), 0);
}

TEST(StepCapture, ANewArenaAfterASwapIsCapturedAfreshAndAnInvalidatedCaptureFallsBack) {
  Runtimes r = make_runtimes();
  const ModelId a = *r.plain->load_model("gpt2-tiny"), b = *r.tested->load_model("gpt2-tiny");
  const int64_t vocab = (*r.plain->model(a))->config().vocab_size;
  const SessionId sa = *r.plain->open_session(a, 48), sb = *r.tested->open_session(b, 48);
  const std::vector<int32_t> prompt = prompt_of(4, vocab);
  std::vector<int32_t> ta = r.plain->generate(sa, prompt, 5)->new_tokens;
  std::vector<int32_t> tb = r.tested->generate(sb, prompt, 5)->new_tokens;
  ASSERT_EQ(ta, tb);
  ASSERT_EQ(r.backend->captured, 1);
  // Swap out and in: the KV views are laid out afresh (a new KV table id), so the old
  // capture is not replayed; the new layout is captured on its second step.
  ASSERT_TRUE(r.tested->swap_out(sb).ok());
  ASSERT_TRUE(r.tested->settle(sb).ok());
  int replays = r.backend->replays;
  ta = r.plain->generate(sa, std::vector<int32_t>{ta.back()}, 6)->new_tokens;
  Result<GenerateResult> gb = r.tested->generate(sb, std::vector<int32_t>{tb.back()}, 6);
  ASSERT_TRUE(gb.ok()) << gb.status().to_string();
  EXPECT_EQ(ta, gb->new_tokens);
  EXPECT_EQ(r.backend->captured, 2);
  EXPECT_EQ(r.backend->replays - replays, 5);  // 6 steps: one runs, one is captured and launched, four replay
  // The backend drops the capture in steady state: that step runs its ops, the next
  // captures afresh, and the results do not change.
  r.backend->drop_next_replay = true;
  replays = r.backend->replays;
  const int released = r.backend->released;
  ta = r.plain->generate(sa, std::vector<int32_t>{ta.back()}, 4)->new_tokens;
  gb = r.tested->generate(sb, std::vector<int32_t>{gb->new_tokens.back()}, 4);
  ASSERT_TRUE(gb.ok()) << gb.status().to_string();
  EXPECT_EQ(ta, gb->new_tokens);
  EXPECT_EQ(r.backend->released, released + 1);  // the dropped capture was let go
  EXPECT_EQ(r.backend->captured, 3);
  EXPECT_EQ(r.backend->replays - replays, 3);  // dropped (ran), captured + launched, replay, replay
}

TEST(StepCapture, BatchedDecodeOfTheSameSessionsReplaysAndEqualsThePlainRuntime) {
  Runtimes r = make_runtimes();
  const ModelId a = *r.plain->load_model("llama-tiny"), b = *r.tested->load_model("llama-tiny");
  const int64_t vocab = (*r.plain->model(a))->config().vocab_size;
  std::vector<SessionId> pa, pb;
  std::vector<int32_t> tokens;
  for (int s = 0; s < 3; ++s) {
    pa.push_back(*r.plain->open_session(a, 40));
    pb.push_back(*r.tested->open_session(b, 40));
    tokens.push_back(r.plain->forward(pa.back(), prompt_of(2 + s, vocab, s))->next_token);
    (void)*r.tested->forward(pb.back(), prompt_of(2 + s, vocab, s));
  }
  const int replays_before = r.backend->replays;
  for (int step = 0; step < 6; ++step) {
    const std::vector<ForwardResult> ra = *r.plain->decode_batch(pa, tokens);
    Result<std::vector<ForwardResult>> rb = r.tested->decode_batch(pb, tokens);
    ASSERT_TRUE(rb.ok()) << rb.status().to_string();
    for (size_t s = 0; s < ra.size(); ++s) {
      ASSERT_EQ(std::memcmp(ra[s].logits.data(), (*rb)[s].logits.data(), ra[s].logits.size() * sizeof(float)), 0)
          << "step " << step << " session " << s;
      tokens[s] = ra[s].next_token;
    }
  }
  EXPECT_EQ(r.backend->replays - replays_before, 5);  // step 0 runs; step 1 is captured and launched; 2..5 replay
}

TEST(StepCapture, RunGraphWithUnknownTablesIsNeverCaptured) {
  Runtimes r = make_runtimes();
  Graph g(Phase::kPrefill);
  const ValueId x = g.add_io_input("x", DType::kF32, {1, 1});
  g.mark_output(g.add_node(OpKind::kAdd, {x, x}));
  float v = 2.0f;
  const TensorView in[] = {TensorView::contiguous(&v, {1, 1}, DType::kF32)};
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(r.tested->run_graph(g, in, {.seq = 1, .past = 0}).ok());
  EXPECT_EQ(r.backend->captured, 0);
}

}  // namespace
}  // namespace djinn
