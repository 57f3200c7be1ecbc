// The Runtime on a backend the host cannot address, exercised without a GPU: a CPU
// backend that says host_addressable() == false and refuses any op whose tensors lie
// outside memory it allocated. Every path that must move bytes through copy() —
// weight upload, KV zeroing, io staging, output download, run_graph's weight / kv
// inputs, swaps — is then checked against the plain CPU runtime, bit for bit.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "djinn/backend/cpu/cpu_backend.h"
#include "djinn/runtime/runtime.h"
#include "runtime/runtime_pair.h"

namespace djinn {
namespace {

class StagedCpuBackend final : public CpuBackend {
 public:
  bool host_addressable() const override { return false; }

  void* allocate(size_t bytes, size_t alignment) override {
    void* p = CpuBackend::allocate(bytes, alignment);
    std::lock_guard lock(mutex_);
    if (p != nullptr) blocks_[static_cast<std::byte*>(p)] = bytes;
    return p;
  }
  void deallocate(void* pointer) override {
    {
      std::lock_guard lock(mutex_);
      blocks_.erase(static_cast<std::byte*>(pointer));
    }
    CpuBackend::deallocate(pointer);
  }
  Status run_op(OpKind op, const OpAttrs& attrs, std::span<const TensorView* const> inputs, const TensorView& output,
                const SymbolBindings& bindings) override {
    for (const TensorView* in : inputs)
      if (!owns(*in)) return internal_error(fmt::format("{}: an input is host memory", op_name(op)));
    if (!owns(output)) return internal_error(fmt::format("{}: the output is host memory", op_name(op)));
    ++ops;
    return CpuBackend::run_op(op, attrs, inputs, output, bindings);
  }
  Status copy(std::span<const CopyRegion> regions, CopyQueue queue) override {
    copies += regions.size();
    return CpuBackend::copy(regions, queue);
  }

  std::atomic<size_t> ops = 0, copies = 0;  // copies also come from the swap workers

 private:
  bool owns(const TensorView& view) {
    if (view.numel() == 0) return true;
    const auto* begin = static_cast<const std::byte*>(view.data);
    std::lock_guard lock(mutex_);
    auto it = blocks_.upper_bound(const_cast<std::byte*>(begin));
    if (it == blocks_.begin()) return false;
    --it;
    return begin >= it->first && begin + view.nbytes() <= it->first + it->second;
  }
  std::mutex mutex_;
  std::map<std::byte*, size_t> blocks_;
};

using Pair = test_support::RuntimePair<StagedCpuBackend>;
Pair make_pair_of_runtimes() { return test_support::make_runtime_pair<StagedCpuBackend>(); }
using test_support::prompt_of;

class StagedRuntime : public ::testing::TestWithParam<std::string> {};

TEST_P(StagedRuntime, GenerationEqualsThePlainCpuBitForBit) {
  Pair p = make_pair_of_runtimes();
  LoadOptions load;
  load.seed = 5;
  const ModelId a = *p.plain->load_model(GetParam(), load), b = *p.tested->load_model(GetParam(), load);
  const int64_t vocab = (*p.plain->model(a))->config().vocab_size;
  const std::vector<int32_t> prompt = prompt_of(6, vocab);
  const SessionId sa = *p.plain->open_session(a, 32), sb = *p.tested->open_session(b, 32);
  const ForwardResult fa = *p.plain->forward(sa, prompt, /*all_logits=*/true);
  Result<ForwardResult> fb = p.tested->forward(sb, prompt, /*all_logits=*/true);
  ASSERT_TRUE(fb.ok()) << fb.status().to_string();
  ASSERT_EQ(fa.logits.size(), fb->logits.size());
  EXPECT_EQ(std::memcmp(fa.logits.data(), fb->logits.data(), fa.logits.size() * sizeof(float)), 0);
  EXPECT_EQ(fa.next_token, fb->next_token);
  Result<GenerateResult> gb = p.tested->generate(sb, std::vector<int32_t>{fb->next_token}, 8);
  ASSERT_TRUE(gb.ok()) << gb.status().to_string();
  EXPECT_EQ(p.plain->generate(sa, std::vector<int32_t>{fa.next_token}, 8)->new_tokens, gb->new_tokens);
  EXPECT_GT(p.backend->ops.load(), 0u);
  EXPECT_GT(p.backend->copies.load(), 0u);
}

TEST_P(StagedRuntime, BatchedDecodeAndSwapsEqualThePlainCpu) {
  Pair p = make_pair_of_runtimes();
  const ModelId a = *p.plain->load_model(GetParam()), b = *p.tested->load_model(GetParam());
  const int64_t vocab = (*p.plain->model(a))->config().vocab_size;
  std::vector<SessionId> plain, staged;
  std::vector<int32_t> tokens;
  for (int s = 0; s < 3; ++s) {
    plain.push_back(*p.plain->open_session(a, 32));
    staged.push_back(*p.tested->open_session(b, 32));
    const std::vector<int32_t> prompt = prompt_of(2 + 3 * s, vocab);  // ragged lengths
    tokens.push_back(p.plain->forward(plain.back(), prompt)->next_token);
    ASSERT_EQ(p.tested->forward(staged.back(), prompt)->next_token, tokens.back());
  }
  // Swap a staged session out and back in between the steps: its KV must survive.
  ASSERT_TRUE(p.tested->swap_out(staged[1]).ok());
  ASSERT_TRUE(p.tested->settle(staged[1]).ok());
  for (int step = 0; step < 4; ++step) {
    const std::vector<ForwardResult> ra = *p.plain->decode_batch(plain, tokens);
    Result<std::vector<ForwardResult>> rb = p.tested->decode_batch(staged, tokens);  // swaps staged[1] in
    ASSERT_TRUE(rb.ok()) << rb.status().to_string();
    for (size_t s = 0; s < ra.size(); ++s) {
      EXPECT_EQ(std::memcmp(ra[s].logits.data(), (*rb)[s].logits.data(), ra[s].logits.size() * sizeof(float)), 0)
          << "step " << step << " session " << s;
      tokens[s] = ra[s].next_token;
      EXPECT_EQ((*rb)[s].next_token, ra[s].next_token);
    }
  }
  EXPECT_EQ(p.tested->swap_manager().stats().swaps_in, 1u);
}

INSTANTIATE_TEST_SUITE_P(Presets, StagedRuntime, ::testing::Values("gpt2-tiny", "llama-tiny"));

TEST(StagedRuntime, RunGraphUploadsWeightsAndKvAndWritesTheKvBack) {
  Pair p = make_pair_of_runtimes();
  // y = x . w, and x appended to a kv cache at position 1.
  Graph g(Phase::kPrefill);
  const ValueId w = g.add_weight("w", DType::kF32, {2, 2});
  const ValueId cache = g.add_kv("cache", DType::kF32, {3, 2});
  const ValueId x = g.add_io_input("x", DType::kF32, {1, 2});
  const ValueId pos = g.add_io_input("pos", DType::kI32, {1});
  g.mark_output(g.add_node(OpKind::kMatMul, {x, w}));
  g.mark_output(g.add_node(OpKind::kKvAppend, {cache, x, pos}));
  for (int i = 0; i < 2; ++i) {  // the second run hits the plan cache
    float wv[4] = {1, 2, 3, 4}, xv[2] = {5, 6};
    float kv_plain[6] = {}, kv_staged[6] = {};
    int32_t at = 1;
    auto inputs = [&](float* kv) {
      return std::vector<TensorView>{TensorView::contiguous(wv, {2, 2}, DType::kF32),
                                     TensorView::contiguous(kv, {3, 2}, DType::kF32),
                                     TensorView::contiguous(xv, {1, 2}, DType::kF32),
                                     TensorView::contiguous(&at, {1}, DType::kI32)};
    };
    const std::vector<HostTensor> a = *p.plain->run_graph(g, inputs(kv_plain), {.seq = 1, .past = 0});
    Result<std::vector<HostTensor>> b = p.tested->run_graph(g, inputs(kv_staged), {.seq = 1, .past = 0});
    ASSERT_TRUE(b.ok()) << b.status().to_string();
    EXPECT_EQ(a[0].bytes, (*b)[0].bytes);
    EXPECT_EQ(a[0].as<float>()[0], 5.0f * 1 + 6.0f * 3);
    EXPECT_EQ(std::memcmp(kv_plain, kv_staged, sizeof kv_plain), 0);  // written back in place
    EXPECT_EQ(kv_staged[2], 5.0f);
    EXPECT_EQ(kv_staged[3], 6.0f);
    EXPECT_EQ(p.tested->vmu().stack().stats().used, 0u);
  }
}

TEST(StagedRuntime, TheDirectInterpreterPathStagesIoToo) {
  Pair p = make_pair_of_runtimes();
  const ModelId a = *p.plain->load_model("llama-tiny");
  const std::shared_ptr<const Model> model = *p.plain->model(a);
  CpuBackend plain_backend;
  // The staged session needs weights in the staged backend's memory: the staged
  // runtime's copy of the model (its Text segment is that backend's allocation).
  const ModelId b = *p.tested->load_model("llama-tiny");
  auto direct_plain = *InferenceSession::create(model, plain_backend, 16);
  auto direct_staged = *InferenceSession::create(*p.tested->model(b), *p.backend, 16);
  const std::vector<int32_t> prompt = prompt_of(5, model->config().vocab_size);
  const GenerateResult ga = *direct_plain->generate(prompt, 6);
  Result<GenerateResult> gb = direct_staged->generate(prompt, 6);
  ASSERT_TRUE(gb.ok()) << gb.status().to_string();
  EXPECT_EQ(ga.new_tokens, gb->new_tokens);
}

// ---- swap copies on queues of the backend's own, with the device-side wait --------
//
// A CPU backend with "device" copy queues: copy_async hands the copy to a thread that
// starts it after a delay and returns an event; compute_waits_for does not wait but
// makes the compute queue (the next op or compute-queue copy) wait for the event, as
// cudaStreamWaitEvent does. A step issued while the copy still runs must then see the
// copied KV, and the host must not have waited for it.
class CopyThreadEvent final : public QueueEvent {
 public:
  bool done() override { return finished_.load(); }
  Status wait() override {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [this] { return finished_.load(); });
    return status_;
  }
  double elapsed_seconds() override { return seconds_; }
  void finish(Status status, double seconds) {
    {
      std::lock_guard lock(mutex_);
      status_ = std::move(status);
      seconds_ = seconds;
      finished_.store(true);
    }
    cv_.notify_all();
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::atomic<bool> finished_{false};
  Status status_;
  double seconds_ = 0;
};

class QueuedCopyBackend final : public CpuBackend {
 public:
  explicit QueuedCopyBackend(std::chrono::milliseconds delay) : delay_(delay) {}
  // The next asynchronous copy fails (after the delay, without copying).
  std::atomic<bool> fail_next_copy = false;
  ~QueuedCopyBackend() override {
    for (std::thread& t : copiers_) t.join();
  }
  bool supports_async_copy() const override { return true; }
  Result<std::shared_ptr<QueueEvent>> copy_async(std::span<const CopyRegion> regions, CopyQueue queue,
                                                 SwapUse use) override {
    auto event = std::make_shared<CopyThreadEvent>();
    ++async_copies;
    uses.push_back(use);
    copiers_.emplace_back([this, event, queue, regions = std::vector<CopyRegion>(regions.begin(), regions.end())] {
      const auto start = std::chrono::steady_clock::now();
      std::this_thread::sleep_for(delay_);
      const Status copied = fail_next_copy.exchange(false) ? internal_error("injected copy failure")
                                                           : CpuBackend::copy(regions, queue);
      event->finish(copied, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    });
    return std::shared_ptr<QueueEvent>(event);
  }
  Status compute_waits_for(QueueEvent& event) override {
    ++device_waits;
    fence_ = &event;
    return {};
  }
  Status run_op(OpKind op, const OpAttrs& attrs, std::span<const TensorView* const> inputs, const TensorView& output,
                const SymbolBindings& bindings) override {
    DJINN_RETURN_IF_ERROR(pass_fence());
    return CpuBackend::run_op(op, attrs, inputs, output, bindings);
  }
  Status copy(std::span<const CopyRegion> regions, CopyQueue queue) override {
    if (queue == CopyQueue::kCompute) DJINN_RETURN_IF_ERROR(pass_fence());
    return CpuBackend::copy(regions, queue);
  }

  std::atomic<int> async_copies = 0, device_waits = 0, fences_found_unfinished = 0;
  std::vector<SwapUse> uses;  // of every copy_async, in order (the caller's thread only)

 private:
  // The compute queue reaches the fence: it waits there (on the "device").
  Status pass_fence() {
    if (fence_ == nullptr) return {};
    if (!fence_->done()) ++fences_found_unfinished;
    const Status status = fence_->wait();
    fence_ = nullptr;
    return status;
  }
  std::chrono::milliseconds delay_;
  std::vector<std::thread> copiers_;
  QueueEvent* fence_ = nullptr;  // the compute thread's only
};

// A plain CPU runtime and one on a QueuedCopyBackend, each with llama-tiny and one
// session that has run the same prompt; the queued session is then swapped out.
struct QueuedPair {
  std::unique_ptr<Runtime> plain, queued;
  QueuedCopyBackend* backend = nullptr;
  SessionId plain_session = 0, queued_session = 0;
  int32_t first = -1;  // the token after the prompt
  int64_t length = 0;  // the queued session's length, swapped out

  QueuedPair(std::chrono::milliseconds copy_delay, int prompt_length) {
    test_support::RuntimePair<QueuedCopyBackend> pair = test_support::make_runtime_pair<QueuedCopyBackend>(copy_delay);
    plain = std::move(pair.plain);
    queued = std::move(pair.tested);
    backend = pair.backend;
    const ModelId a = *plain->load_model("llama-tiny"), b = *queued->load_model("llama-tiny");
    const std::vector<int32_t> prompt = prompt_of(prompt_length, (*plain->model(a))->config().vocab_size);
    plain_session = *plain->open_session(a, 32);
    queued_session = *queued->open_session(b, 32);
    first = plain->forward(plain_session, prompt)->next_token;
    EXPECT_EQ(queued->forward(queued_session, prompt)->next_token, first);
    EXPECT_TRUE(queued->swap_out(queued_session).ok());
    EXPECT_TRUE(queued->settle(queued_session).ok());
    length = (*queued->session(queued_session))->length();
  }
};

TEST(QueuedSwapCopies, AStepRightAfterASwapInWaitsOnTheDeviceAndSeesTheKv) {
  QueuedPair p(std::chrono::milliseconds(60), 7);
  Runtime* plain = p.plain.get();
  Runtime* queued = p.queued.get();
  QueuedCopyBackend& backend = *p.backend;
  const SessionId sa = p.plain_session, sb = p.queued_session;
  const int32_t first = p.first;
  ASSERT_EQ((*queued->session(sb))->residency(), Residency::kSwapped);
  const auto issued = std::chrono::steady_clock::now();
  ASSERT_TRUE(queued->swap_in(sb, SwapUse::kAhead).ok());
  // Issuing returned at once: the copy sleeps 60 ms before it starts.
  EXPECT_LT(std::chrono::steady_clock::now() - issued, std::chrono::milliseconds(30));
  EXPECT_EQ((*queued->session(sb))->residency(), Residency::kSwappingIn);

  const std::vector<int32_t> next{first};
  const ForwardResult want = *plain->forward(sa, next);
  Result<ForwardResult> got = queued->forward(sb, next);
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  EXPECT_EQ(std::memcmp(want.logits.data(), got->logits.data(), want.logits.size() * sizeof(float)), 0);
  EXPECT_EQ(got->next_token, want.next_token);
  EXPECT_EQ(backend.async_copies.load(), 2);
  EXPECT_EQ(backend.uses, (std::vector<SwapUse>{SwapUse::kAhead, SwapUse::kAhead}));  // out, then in ahead
  EXPECT_EQ(backend.device_waits.load(), 1);              // ordered on the "device" ...
  EXPECT_EQ(backend.fences_found_unfinished.load(), 1);   // ... while the copy still ran
  EXPECT_GT(got->swap_wait_us, 10'000.0);                  // and the step reports the wait
  EXPECT_EQ((*queued->session(sb))->residency(), Residency::kResident);  // settled after the step
  EXPECT_EQ(queued->swap_manager().stats().swaps_in, 1u);
  // Generation goes on identically.
  EXPECT_EQ(queued->generate(sb, std::vector<int32_t>{got->next_token}, 5)->new_tokens,
            plain->generate(sa, std::vector<int32_t>{want.next_token}, 5)->new_tokens);
}

// A step on a swapped session swaps it in itself: that copy is issued as one a step
// follows (a backend never waits for it on the host) and the step is ordered after it
// on the "device", still running.
TEST(QueuedSwapCopies, AStepOnASwappedSessionIssuesItsSwapInForTheDevice) {
  QueuedPair p(std::chrono::milliseconds(60), 6);
  QueuedCopyBackend& backend = *p.backend;
  const std::vector<int32_t> next{p.first};
  const ForwardResult want = *p.plain->forward(p.plain_session, next);
  Result<ForwardResult> got = p.queued->forward(p.queued_session, next);
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  EXPECT_EQ(std::memcmp(want.logits.data(), got->logits.data(), want.logits.size() * sizeof(float)), 0);
  EXPECT_EQ(backend.uses, (std::vector<SwapUse>{SwapUse::kAhead, SwapUse::kStepFollows}));
  EXPECT_EQ(backend.device_waits.load(), 1);
  EXPECT_EQ(backend.fences_found_unfinished.load(), 1);
  EXPECT_EQ((*p.queued->session(p.queued_session))->residency(), Residency::kResident);
}

// A swap-in whose copy fails after the step was ordered after it: the step does not
// count (the session's length stays), the session is SWAPPED again with its state in
// the HostPool slice, and a second swap-in brings it back intact.
TEST(QueuedSwapCopies, AFailedSwapInCopyUndoesTheStepAndKeepsTheState) {
  QueuedPair p(std::chrono::milliseconds(20), 5);
  Runtime* plain = p.plain.get();
  Runtime* queued = p.queued.get();
  QueuedCopyBackend& backend = *p.backend;
  const SessionId sa = p.plain_session, sb = p.queued_session;
  const int32_t first = p.first;
  const int64_t length = p.length;

  backend.fail_next_copy = true;
  ASSERT_TRUE(queued->swap_in(sb, SwapUse::kAhead).ok());
  Result<ForwardResult> failed = queued->forward(sb, std::vector<int32_t>{first});
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("injected copy failure"), std::string::npos) << failed.status().to_string();
  EXPECT_EQ((*queued->session(sb))->residency(), Residency::kSwapped);
  EXPECT_EQ((*queued->session(sb))->length(), length);
  EXPECT_EQ(queued->swap_manager().stats().swaps_in, 0u);  // a failed copy is not a swap

  // Forward swaps it in again (this copy succeeds) and continues where it was.
  const ForwardResult want = *plain->forward(sa, std::vector<int32_t>{first});
  Result<ForwardResult> got = queued->forward(sb, std::vector<int32_t>{first});
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  EXPECT_EQ(got->next_token, want.next_token);
  EXPECT_EQ(std::memcmp(want.logits.data(), got->logits.data(), want.logits.size() * sizeof(float)), 0);
  EXPECT_EQ((*queued->session(sb))->length(), length + 1);
  EXPECT_EQ((*queued->session(sb))->residency(), Residency::kResident);
}

}  // namespace
}  // namespace djinn
