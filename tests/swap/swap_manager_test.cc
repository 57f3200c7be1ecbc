#include "djinn/swap/swap_manager.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "djinn/backend/cpu/cpu_backend.h"
#include "djinn/runtime/runtime.h"

namespace djinn {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;

uint64_t checksum(const std::vector<ByteSpan>& spans) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const ByteSpan& s : spans)
    for (size_t i = 0; i < s.bytes; ++i) h = (h ^ static_cast<uint8_t>(s.data[i])) * 0x100000001b3ull;
  return h;
}

TEST(SwapManager, GatherScatterRoundTripsPreserveEveryByte) {
  auto pool = *HostPool::create(8 << 20);
  CpuBackend backend;
  auto region = *VmuRegion::create(backend, 16 << 20);
  DataSegment data(*region, 1 << 20);
  SwapManager swap(backend, *pool, data);
  std::mt19937 rng(7);
  std::vector<std::byte> source(4 << 20), target(4 << 20);
  for (int cycle = 0; cycle < 2000; ++cycle) {
    // Random spans inside `source`, copied out to the pool and back into `target`.
    std::vector<ByteSpan> out, in;
    size_t total = 0;
    const int n = 1 + static_cast<int>(rng() % 8);
    for (int i = 0; i < n; ++i) {
      const size_t bytes = rng() % (cycle % 10 == 0 ? 400000 : 4000);
      const size_t offset = rng() % (source.size() - bytes);
      for (size_t b = 0; b < bytes; b += 97) source[offset + b] = static_cast<std::byte>(rng());
      out.push_back({source.data() + offset, bytes});
      in.push_back({target.data() + offset, bytes});
      total += bytes;
    }
    std::byte* slice = *pool->allocate(std::max<size_t>(total, 1), "test");
    ASSERT_TRUE(swap.gather(out, slice).wait().ok());
    // Scatter into a fresh target area and compare span by span.
    std::memset(target.data(), 0, target.size());
    ASSERT_TRUE(swap.scatter(slice, in, SwapUse::kAhead).wait().ok());
    for (size_t i = 0; i < out.size(); ++i) ASSERT_EQ(std::memcmp(out[i].data, in[i].data, out[i].bytes), 0) << cycle;
    pool->free(slice);
    ASSERT_TRUE(pool->check_invariants().ok());
  }
  EXPECT_EQ(swap.stats().swaps_out, 2000u);
  EXPECT_EQ(swap.stats().swaps_in, 2000u);
  EXPECT_EQ(pool->stats().used, 0u);
}

std::unique_ptr<Runtime> runtime_with_pool(double pool_mb, double arena_mb = 0.25) {
  RuntimeOptions options;
  options.device_mem_gb = 0.25;
  options.host_pool_gb = pool_mb / 1024;
  options.arena_mb = arena_mb;
  return *Runtime::create(options);
}

std::vector<int32_t> prompt_of(int n, int salt) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back((i * 31 + salt * 17 + 3) % 512);
  return ids;
}

TEST(SwapManager, SessionRoundTripsKeepTheKvAndTheGeneration) {
  auto runtime = runtime_with_pool(64);
  const ModelId model = *runtime->load_model("llama-tiny");
  std::mt19937 rng(3);
  for (int cycle = 0; cycle < 30; ++cycle) {
    const int prompt_len = 1 + static_cast<int>(rng() % 40);
    const SessionId swapped = *runtime->open_session(model, 96);
    const SessionId twin = *runtime->open_session(model, 96);
    const std::vector<int32_t> prompt = prompt_of(prompt_len, cycle);
    ASSERT_TRUE(runtime->forward(swapped, prompt).ok());
    ASSERT_TRUE(runtime->forward(twin, prompt).ok());
    InferenceSession& s = **runtime->session(swapped);
    const uint64_t before = checksum(s.kv_used_spans());
    const size_t live_before = runtime->vmu().data().stats().arenas_live;

    ASSERT_TRUE(runtime->swap_out(swapped).ok());
    ASSERT_TRUE(runtime->settle(swapped).ok());
    EXPECT_EQ(s.residency(), Residency::kSwapped);
    EXPECT_EQ(runtime->vmu().data().stats().arenas_live, live_before - 1);  // the arena went back
    EXPECT_EQ(runtime->vmu().host_pool().stats().used % 256, 0u);
    EXPECT_GE(runtime->vmu().host_pool().stats().used, s.kv_used_bytes());
    EXPECT_FALSE(s.forward(prompt_of(1, 0)).ok());  // no silent use of a swapped session

    ASSERT_TRUE(runtime->swap_in(swapped, SwapUse::kAhead).ok());
    ASSERT_TRUE(runtime->settle(swapped).ok());
    EXPECT_EQ(s.residency(), Residency::kResident);
    EXPECT_EQ(checksum(s.kv_used_spans()), before);
    EXPECT_EQ(runtime->vmu().host_pool().stats().used, 0u);

    // Generation continues exactly as on the twin that never left.
    const auto a = runtime->generate(swapped, prompt_of(3, cycle + 1), 6);
    const auto b = runtime->generate(twin, prompt_of(3, cycle + 1), 6);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->new_tokens, b->new_tokens);
    ASSERT_TRUE(runtime->close_session(swapped).ok());
    ASSERT_TRUE(runtime->close_session(twin).ok());
    ASSERT_TRUE(runtime->vmu().check_invariants().ok());
  }
}

TEST(SwapManager, GenerateOnASwappedSessionSwapsItInImplicitly) {
  auto runtime = runtime_with_pool(16);
  const ModelId model = *runtime->load_model("gpt2-tiny");
  const SessionId s = *runtime->open_session(model, 64);
  const SessionId twin = *runtime->open_session(model, 64);
  ASSERT_TRUE(runtime->forward(s, prompt_of(10, 1)).ok());
  ASSERT_TRUE(runtime->forward(twin, prompt_of(10, 1)).ok());
  ASSERT_TRUE(runtime->swap_out(s).ok());  // not settled: generate must wait for the copy itself
  const auto a = runtime->generate(s, prompt_of(2, 2), 5);
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  EXPECT_EQ(a->new_tokens, runtime->generate(twin, prompt_of(2, 2), 5)->new_tokens);
  EXPECT_EQ(runtime->swap_manager().stats().swaps_out, 1u);
  EXPECT_EQ(runtime->swap_manager().stats().swaps_in, 1u);
}

TEST(SwapManager, AFullPoolRefusesAndTheSessionStaysResident) {
  auto runtime = runtime_with_pool(/*pool_mb=*/0.01);  // 10 KiB
  const ModelId model = *runtime->load_model("llama-tiny");  // 512 B of KV per token
  const SessionId s = *runtime->open_session(model, 64);
  ASSERT_TRUE(runtime->forward(s, prompt_of(40, 1)).ok());  // 20 KiB used
  Result<SwapTicket> refused = runtime->swap_out(s);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kOutOfMemory);
  EXPECT_NE(refused.status().message().find("HostPool"), std::string::npos);
  EXPECT_EQ(runtime->swap_manager().stats().refusals, 1u);
  EXPECT_EQ((*runtime->session(s))->residency(), Residency::kResident);
  EXPECT_TRUE(runtime->forward(s, prompt_of(1, 2)).ok());
}

TEST(SwapManager, SwapInWithoutAnArenaFailsAndKeepsTheState) {
  // Arenas of 1 MiB in a 4 MiB VMU with 0.5 MiB of weights: three fit.
  RuntimeOptions options;
  options.device_mem_gb = 4.0 / 1024;
  options.host_pool_gb = 8.0 / 1024;
  options.arena_mb = 1;
  auto runtime = *Runtime::create(options);
  const ModelId model = *runtime->load_model("gpt2-tiny");
  const SessionId a = *runtime->open_session(model, 64);
  ASSERT_TRUE(runtime->forward(a, prompt_of(20, 1)).ok());
  const uint64_t before = checksum((*runtime->session(a))->kv_used_spans());
  ASSERT_TRUE(runtime->swap_out(a).ok());
  ASSERT_TRUE(runtime->settle(a).ok());
  std::vector<SessionId> others;
  for (;;) {
    Result<SessionId> s = runtime->open_session(model, 64);
    if (!s.ok()) break;
    others.push_back(*s);
  }
  Result<SwapTicket> no_room = runtime->swap_in(a, SwapUse::kAhead);
  ASSERT_FALSE(no_room.ok());
  EXPECT_EQ(no_room.status().code(), StatusCode::kOutOfMemory);
  EXPECT_EQ((*runtime->session(a))->residency(), Residency::kSwapped);
  ASSERT_TRUE(runtime->close_session(others.back()).ok());
  ASSERT_TRUE(runtime->swap_in(a, SwapUse::kAhead).ok());
  ASSERT_TRUE(runtime->settle(a).ok());
  EXPECT_EQ(checksum((*runtime->session(a))->kv_used_spans()), before);
}

}  // namespace
}  // namespace djinn
