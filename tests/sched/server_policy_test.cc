// The swap policies at work inside `djinn serve`: phase signals and idleness move
// sessions' KV caches to the HostPool and back, and generation never notices.
#include <gtest/gtest.h>

#include <chrono>
#include <atomic>
#include <random>
#include <thread>

#include "djinn/rpc/client.h"
#include "djinn/rpc/server.h"

namespace djinn {
namespace {

using namespace std::chrono_literals;

class PolicyServer {
 public:
  explicit PolicyServer(const std::string& policy, double idle_timeout_s = 30) {
    rpc::ServerOptions options;
    options.listen = {"tcp://127.0.0.1:*"};
    options.runtime.device_mem_gb = 0.25;
    options.runtime.host_pool_gb = 0.05;
    options.policy = policy;
    options.idle_timeout_s = idle_timeout_s;
    server_ = std::move(rpc::Server::create(options)).value();
    thread_ = std::thread([this] { (void)server_->serve(); });
    client_ = std::move(Client::connect(server_->endpoints()[0])).value();
  }
  ~PolicyServer() {
    server_->stop();
    thread_.join();
  }
  Client& client() { return *client_; }
  nlohmann::json session_stats(uint64_t id) {
    const nlohmann::json stats = *client_->stats();
    for (const nlohmann::json& s : stats["sessions"])
      if (s["id"] == id) return s;
    return {};
  }
  nlohmann::json stats() { return *client_->stats(); }
  const std::string& endpoint() const { return server_->endpoints()[0]; }

  // Polls until `state` or the timeout; returns the last state seen.
  std::string wait_for_state(uint64_t id, const std::string& state, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string seen;
    while (std::chrono::steady_clock::now() < deadline) {
      seen = session_stats(id)["state"].get<std::string>();
      if (seen == state) break;
      std::this_thread::sleep_for(5ms);
    }
    return seen;
  }

 private:
  std::unique_ptr<rpc::Server> server_;
  std::thread thread_;
  std::unique_ptr<Client> client_;
};

std::vector<int32_t> prompt_of(int n, int salt) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back((i * 13 + salt * 7 + 1) % 512);
  return ids;
}

TEST(ServerPolicy, ProactiveSwapsOutOnIoWaitAndIsBackBeforeTheResumeTime) {
  PolicyServer server("proactive");
  const uint64_t model = server.client().load_model("llama-tiny")->model_id();
  RemoteSession agent = *server.client().open_session(model, 128);
  RemoteSession twin = *server.client().open_session(model, 128);
  ASSERT_TRUE(agent.generate(prompt_of(20, 1), 4).ok());
  ASSERT_TRUE(twin.generate(prompt_of(20, 1), 4).ok());
  const size_t arenas_before = server.stats()["vmu"]["data"]["arenas_live"].get<size_t>();

  const auto signalled = std::chrono::steady_clock::now();
  ASSERT_TRUE(agent.signal(rpc::SignalPhase::IO_WAIT, /*estimated_resume_ms=*/1000).ok());
  EXPECT_EQ(server.wait_for_state(agent.id(), "SWAPPED", 200ms), "SWAPPED");
  EXPECT_EQ(server.stats()["vmu"]["data"]["arenas_live"].get<size_t>(), arenas_before - 1);
  EXPECT_GT(server.stats()["vmu"]["host_pool"]["used"].get<size_t>(), 0u);
  // Not brought back early: at 600 ms it is still out...
  std::this_thread::sleep_until(signalled + 600ms);
  EXPECT_EQ(server.session_stats(agent.id())["state"], "SWAPPED");
  // ...and the prefetch has started (or finished) before the 1000 ms the agent announced.
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(signalled + 1000ms - std::chrono::steady_clock::now());
  const std::string state = server.wait_for_state(agent.id(), "RESIDENT", left);
  EXPECT_TRUE(state == "RESIDENT" || state == "SWAPPING_IN") << state;
  ASSERT_TRUE(agent.signal(rpc::SignalPhase::COMPUTE).ok());
  const auto a = agent.generate(prompt_of(2, 9), 6);
  const auto b = twin.generate(prompt_of(2, 9), 6);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->tokens, b->tokens);
  EXPECT_EQ(server.stats()["counters"]["policy_swaps_out"], 1);
  EXPECT_EQ(server.stats()["counters"]["policy_swaps_in"], 1);
}

TEST(ServerPolicy, ProactiveWithoutAnEstimateWaitsForCompute) {
  PolicyServer server("proactive");
  const uint64_t model = server.client().load_model("gpt2-tiny")->model_id();
  RemoteSession agent = *server.client().open_session(model, 64);
  ASSERT_TRUE(agent.generate(prompt_of(10, 2), 2).ok());
  ASSERT_TRUE(agent.signal(rpc::SignalPhase::IO_WAIT).ok());
  EXPECT_EQ(server.wait_for_state(agent.id(), "SWAPPED", 200ms), "SWAPPED");
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(server.session_stats(agent.id())["state"], "SWAPPED");
  ASSERT_TRUE(agent.signal(rpc::SignalPhase::COMPUTE).ok());
  EXPECT_EQ(server.wait_for_state(agent.id(), "RESIDENT", 200ms), "RESIDENT");
}

TEST(ServerPolicy, ReactiveSwapsIdleSessionsAndGenerateBringsThemBack) {
  PolicyServer server("reactive", /*idle_timeout_s=*/0.1);
  const uint64_t model = server.client().load_model("gpt2-tiny")->model_id();
  RemoteSession session = *server.client().open_session(model, 64);
  RemoteSession twin = *server.client().open_session(model, 64);
  ASSERT_TRUE(session.generate(prompt_of(12, 3), 3).ok());
  ASSERT_TRUE(twin.generate(prompt_of(12, 3), 3).ok());
  ASSERT_TRUE(session.signal(rpc::SignalPhase::IO_WAIT, 10).ok());  // ignored by reactive
  EXPECT_EQ(server.wait_for_state(session.id(), "SWAPPED", 500ms), "SWAPPED");
  const auto a = session.generate(prompt_of(1, 4), 5);  // implicit swap-in
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  EXPECT_EQ(a->tokens, twin.generate(prompt_of(1, 4), 5)->tokens);
}

TEST(ServerPolicy, NoneNeverSwaps) {
  PolicyServer server("none");
  const uint64_t model = server.client().load_model("gpt2-tiny")->model_id();
  RemoteSession session = *server.client().open_session(model, 64);
  ASSERT_TRUE(session.generate(prompt_of(5, 5), 2).ok());
  ASSERT_TRUE(session.signal(rpc::SignalPhase::IO_WAIT, 50).ok());
  std::this_thread::sleep_for(150ms);
  EXPECT_EQ(server.session_stats(session.id())["state"], "RESIDENT");
  EXPECT_EQ(server.stats()["swap"]["swaps_out"], 0);
}

}  // namespace
}  // namespace djinn

namespace djinn {
namespace {

// Generations of different clients share decode steps (continuous batching) at ragged
// lengths and still reproduce the Hugging Face fixture: client c prompts with the first
// 16 + c tokens of the golden greedy sequence, so its greedy continuation is the rest
// of it (every golden step has a logit margin >= 0.004, far above the ~1e-5 by which a
// batched GEMM's rounding differs from a single row's).
TEST(ServerBatching, ConcurrentGenerationsShareDecodeStepsAndReproduceTheFixture) {
  PolicyServer server("none");
  const uint64_t model = server.client().load_model(DJINN_GOLDEN_DIR "/llama-tiny")->model_id();
  const std::vector<int32_t> golden = {8,   280, 323, 359, 343, 79,  432, 394, 350, 436, 354, 53,  66,  226,
                                       14,  290, 279, 262, 449, 449, 449, 254, 228, 9,   210, 83,  178, 376,
                                       102, 427, 470, 142, 200, 352, 372, 352, 372, 485, 381, 383};
  constexpr int kClients = 8;
  std::vector<std::vector<int32_t>> got(kClients);
  std::vector<std::thread> threads;
  const std::string endpoint = server.endpoint();
  for (int c = 0; c < kClients; ++c)
    threads.emplace_back([&, c] {
      auto client = std::move(Client::connect(endpoint)).value();
      RemoteSession s = *client->open_session(model, 64);
      const std::vector<int32_t> prompt(golden.begin(), golden.begin() + 16 + c);
      got[static_cast<size_t>(c)] = s.generate(prompt, 24 - c)->tokens;
    });
  for (std::thread& t : threads) t.join();
  for (int c = 0; c < kClients; ++c)
    EXPECT_EQ(got[static_cast<size_t>(c)], std::vector<int32_t>(golden.begin() + 16 + c, golden.end())) << "client " << c;
  const nlohmann::json stats = server.stats();
  EXPECT_GT(stats["counters"]["max_decode_batch"].get<uint64_t>(), 1u);
  EXPECT_GT(stats["latency"]["compute"]["samples"].get<uint64_t>(), 0u);
  EXPECT_GE(stats["latency"]["queue"]["p99_us"].get<double>(), stats["latency"]["queue"]["p50_us"].get<double>());
}

}  // namespace
}  // namespace djinn

namespace djinn {
namespace {

TEST(ServerAdmission, ANewSessionWaitsForAnArenaThenFailsWithOutOfMemory) {
  rpc::ServerOptions options;
  options.listen = {"tcp://127.0.0.1:*"};
  options.runtime.device_mem_gb = 4.0 / 1024;  // 4 MiB: gpt2-tiny's 0.5 MiB of weights + three 1 MiB arenas
  options.runtime.arena_mb = 1;
  options.policy = "none";
  options.admission_timeout_s = 0.5;
  auto server = std::move(rpc::Server::create(options)).value();
  std::thread serving([&] { (void)server->serve(); });
  auto client = std::move(Client::connect(server->endpoints()[0])).value();
  const uint64_t model = client->load_model("gpt2-tiny")->model_id();
  std::vector<RemoteSession> open;
  for (int i = 0; i < 3; ++i) open.push_back(*client->open_session(model, 64));

  // 1. A fourth session waits; a close 150 ms later lets it in.
  Result<RemoteSession> waited = invalid_argument("not run");
  const auto start = std::chrono::steady_clock::now();
  std::thread waiter([&] {
    auto other = std::move(Client::connect(server->endpoints()[0])).value();
    waited = other->open_session(model, 64);
    if (waited.ok()) (void)waited->close();
  });
  std::this_thread::sleep_for(150ms);
  nlohmann::json states = (*client->stats())["session_states"];
  EXPECT_EQ(states["ADMITTING"], 1) << states.dump();
  EXPECT_EQ(states["RESIDENT"], 3) << states.dump();
  EXPECT_EQ(states["CLOSED"], 0) << states.dump();
  ASSERT_TRUE(open.back().close().ok());
  open.pop_back();
  waiter.join();
  EXPECT_TRUE(waited.ok()) << waited.status().to_string();
  EXPECT_GE(std::chrono::steady_clock::now() - start, 150ms);
  EXPECT_EQ((*client->stats())["counters"]["admissions_waited"], 1);

  // 2. With nobody closing, it fails after the timeout, as out-of-memory, and is counted.
  open.push_back(*client->open_session(model, 64));
  const auto again = std::chrono::steady_clock::now();
  Result<RemoteSession> refused = client->open_session(model, 64);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kOutOfMemory);
  EXPECT_NE(refused.status().message().find("admission timeout"), std::string::npos) << refused.status().message();
  EXPECT_GE(std::chrono::steady_clock::now() - again, 450ms);
  const nlohmann::json stats = *client->stats();
  EXPECT_EQ(stats["counters"]["errors"]["admission_timeout"], 1);
  EXPECT_EQ(stats["counters"]["admissions_waiting"], 0);
  states = stats["session_states"];
  EXPECT_EQ(states["ADMITTING"], 0) << states.dump();
  EXPECT_EQ(states["RESIDENT"], 3) << states.dump();
  EXPECT_EQ(states["CLOSED"], 2) << states.dump();  // one closed to let the waiter in, then the waiter's
  server->stop();
  serving.join();
}

}  // namespace
}  // namespace djinn

namespace djinn {
namespace {

// Regressions from review: requests that fail, or that run while the session last said
// IO_WAIT, must leave the policy's view of the session true.
TEST(ServerPolicy, RunningASessionMeansComputeAndFailuresDoNotDesyncThePolicy) {
  PolicyServer server("proactive");
  const uint64_t model = server.client().load_model("gpt2-tiny")->model_id();
  RemoteSession s = *server.client().open_session(model, 96);
  ASSERT_TRUE(s.generate(prompt_of(5, 1), 2).ok());
  // IO_WAIT, then a Generate without COMPUTE: one swap-out (and the implicit swap-in),
  // not one per decoded token.
  ASSERT_TRUE(s.signal(rpc::SignalPhase::IO_WAIT).ok());
  ASSERT_EQ(server.wait_for_state(s.id(), "SWAPPED", 200ms), "SWAPPED");
  ASSERT_TRUE(s.generate(prompt_of(2, 2), 20).ok());
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(server.stats()["counters"]["policy_swaps_out"], 1);
  EXPECT_EQ(server.session_stats(s.id())["state"], "RESIDENT");
  EXPECT_EQ(server.session_stats(s.id())["phase"], "COMPUTE");
  // A failing request (a token outside the vocabulary) after IO_WAIT: the next IO_WAIT
  // still swaps the session out.
  ASSERT_TRUE(s.signal(rpc::SignalPhase::IO_WAIT).ok());
  const std::vector<int32_t> bad = {99999};
  EXPECT_FALSE(s.forward(bad).ok());
  ASSERT_TRUE(s.signal(rpc::SignalPhase::IO_WAIT).ok());
  EXPECT_EQ(server.wait_for_state(s.id(), "SWAPPED", 300ms), "SWAPPED");
  EXPECT_TRUE(s.generate(prompt_of(1, 3), 2).ok());
}

TEST(ServerPolicy, AnImpossibleGenerateIsRefusedWithoutTouchingTheSession) {
  PolicyServer server("none");
  const uint64_t model = server.client().load_model("gpt2-tiny")->model_id();
  RemoteSession s = *server.client().open_session(model, 64);
  Result<RemoteGenerateResult> huge = s.generate(prompt_of(2, 1), INT64_MAX);
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(server.session_stats(s.id())["length"], 0);
  EXPECT_TRUE(s.generate(prompt_of(2, 1), 3).ok());
}

}  // namespace
}  // namespace djinn

namespace djinn {
namespace {

// Many agents signalling at random while generating: every invariant holds, no session
// is lost, and each session's length is exactly what its agent put into it.
TEST(ServerStress, RandomSignalsKeepEveryInvariantAndLoseNoSession) {
  for (const char* policy : {"proactive", "reactive"}) {
    PolicyServer server(policy, /*idle_timeout_s=*/0.02);
    const uint64_t model = server.client().load_model("gpt2-tiny")->model_id();
    constexpr int kAgents = 6, kRounds = 25;
    std::vector<std::thread> agents;
    std::vector<uint64_t> ids(kAgents);
    std::vector<int64_t> lengths(kAgents, 0);
    std::atomic<int> errors{0};
    const std::string endpoint = server.endpoint();
    for (int a = 0; a < kAgents; ++a)
      agents.emplace_back([&, a] {
        auto client = std::move(Client::connect(endpoint)).value();
        RemoteSession s = *client->open_session(model, 128);
        ids[static_cast<size_t>(a)] = s.id();
        std::mt19937 rng(static_cast<uint32_t>(a) * 7 + 1);
        int64_t length = 0;
        for (int round = 0; round < kRounds; ++round) {
          switch (rng() % 4) {
            case 0: errors += !s.signal(rpc::SignalPhase::IO_WAIT, static_cast<double>(rng() % 30)).ok(); break;
            case 1: errors += !s.signal(rpc::SignalPhase::COMPUTE).ok(); break;
            case 2: std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 25)); break;
            case 3:
              if (length + 4 <= 128) {
                Result<RemoteGenerateResult> g = s.generate(prompt_of(2, round), 2);
                errors += !g.ok();
                if (g.ok()) length += 3;  // 2 prompt tokens + the first new one fed back on the next step
              }
              break;
          }
        }
        lengths[static_cast<size_t>(a)] = length;
      });
    for (std::thread& t : agents) t.join();
    EXPECT_EQ(errors.load(), 0) << policy;
    std::this_thread::sleep_for(50ms);  // let in-flight swaps settle
    const nlohmann::json stats = server.stats();
    EXPECT_EQ(stats["invariants"], "ok") << policy;
    ASSERT_EQ(stats["sessions"].size(), static_cast<size_t>(kAgents)) << policy;
    for (int a = 0; a < kAgents; ++a) {
      const nlohmann::json s = server.session_stats(ids[static_cast<size_t>(a)]);
      EXPECT_EQ(s["length"].get<int64_t>(), lengths[static_cast<size_t>(a)]) << policy << " agent " << a;
    }
    EXPECT_EQ(stats["vmu"]["stack"]["used"], 0);
    EXPECT_GT(stats["swap"]["swaps_out"].get<uint64_t>(), 0u) << policy << ": the stress must really move sessions";
  }
}

}  // namespace
}  // namespace djinn
