// The server and client end to end, over loopback TCP: session isolation, arena reuse,
// many concurrent clients, garbage input, lease expiry, protocol versions, RunGraph,
// pipelined requests and remote == native generation.
#include <fmt/format.h>
#include <google/protobuf/stubs/common.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <latch>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "djinn/models/model_config.h"
#include "djinn/core/cpu_affinity.h"
#include "djinn/rpc/client.h"
#include "djinn/rpc/graph_codec.h"
#include "djinn/rpc/server.h"
#include "djinn/rpc/wire.h"
#include "djinn/runtime/runtime.h"

// Garbage strings make protobuf log "invalid UTF-8" for every parse; keep the output
// readable where this protobuf has a way to.
#if defined(GOOGLE_PROTOBUF_VERSION) && GOOGLE_PROTOBUF_VERSION < 4022000
#define DJINN_QUIET_PROTOBUF() google::protobuf::LogSilencer protobuf_quiet_
#else
#define DJINN_QUIET_PROTOBUF() (void)0
#endif

namespace djinn {

// gtest prints codes by name ("permission denied"), not as bytes.
inline void PrintTo(StatusCode code, std::ostream* os) { *os << status_code_name(code); }

namespace {

using nlohmann::json;
using namespace std::chrono_literals;

rpc::ServerOptions loopback_options() {
  rpc::ServerOptions options;
  options.listen = {"tcp://127.0.0.1:*"};
  options.runtime.device_mem_gb = 0.25;
  return options;
}

// A server on a thread of its own; stopped and joined when the test is done.
class LoopbackServer {
 public:
  explicit LoopbackServer(const rpc::ServerOptions& options = loopback_options()) {
    Result<std::unique_ptr<rpc::Server>> created = rpc::Server::create(options);
    if (!created.ok()) throw std::runtime_error("Server::create: " + created.status().to_string());
    server_ = std::move(created).value();
    thread_ = std::thread([this] { served_ = server_->serve(); });
  }
  ~LoopbackServer() {
    server_->stop();
    thread_.join();
    EXPECT_TRUE(served_.ok()) << served_.to_string();
  }
  LoopbackServer(const LoopbackServer&) = delete;
  LoopbackServer& operator=(const LoopbackServer&) = delete;

  const std::string& endpoint() const { return server_->endpoints().at(0); }

  std::unique_ptr<Client> connect(const std::string& name = "rpc_test") const {
    Result<std::unique_ptr<Client>> client = Client::connect(endpoint(), {.name = name, .timeout_s = 30});
    if (!client.ok()) throw std::runtime_error("Client::connect: " + client.status().to_string());
    return std::move(client).value();
  }

 private:
  std::unique_ptr<rpc::Server> server_;
  std::thread thread_;
  Status served_;
};

json stats_of(Client& client) {
  Result<json> stats = client.stats();
  if (!stats.ok()) throw std::runtime_error("stats: " + stats.status().to_string());
  return std::move(stats).value();
}

uint64_t error_count(const json& stats, const std::string& kind) {
  const json& errors = stats.at("counters").at("errors");
  return errors.contains(kind) ? errors.at(kind).get<uint64_t>() : 0;
}

uint64_t total_errors(const json& stats) {
  uint64_t total = 0;
  for (const auto& [kind, n] : stats.at("counters").at("errors").items()) total += n.get<uint64_t>();
  return total;
}

std::vector<uint64_t> session_ids(const json& stats) {
  std::vector<uint64_t> ids;
  for (const json& s : stats.at("sessions")) ids.push_back(s.at("id").get<uint64_t>());
  return ids;
}

std::vector<int32_t> prompt_of(int n, int salt = 0) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back((i * 37 + 11 + salt * 101) % 500);
  return ids;
}

std::vector<int32_t> generate_on_fresh_session(Client& client, uint64_t model, std::span<const int32_t> prompt,
                                               int64_t max_new_tokens) {
  Result<RemoteSession> session = client.open_session(model);
  if (!session.ok()) throw std::runtime_error("open_session: " + session.status().to_string());
  Result<RemoteGenerateResult> result = session->generate(prompt, max_new_tokens);
  if (!result.ok()) throw std::runtime_error("generate: " + result.status().to_string());
  if (!session->close().ok()) throw std::runtime_error("close failed");
  return result->tokens;
}

// out = a[seq, 4] + b[4] (b a resident weight).
Graph add_graph() {
  Graph g(Phase::kPrefill);
  const ValueId a = g.add_io_input("a", DType::kF32, {Symbol::kSeq, 4});
  const ValueId b = g.add_weight("b", DType::kF32, {4});
  g.mark_output(g.add_node(OpKind::kAdd, {a, b}));
  return g;
}

// add_graph's first run through `remote` (the upload), on one row of zeros.
Status first_run(RemoteGraph& remote) {
  std::vector<float> zero(4, 0.0f);
  const TensorView io = TensorView::contiguous(zero.data(), {1, 4}, DType::kF32);
  return remote.run(std::span(&io, 1), {.seq = 1, .past = 0}).status();
}

// Whether `out` is a[rows, 4] + b (exactly: one f32 add per element).
::testing::AssertionResult is_sum(const std::vector<HostTensor>& out, const std::vector<float>& a, const float (&b)[4]) {
  if (out.size() != 1) return ::testing::AssertionFailure() << out.size() << " outputs";
  const auto rows = static_cast<int64_t>(a.size() / 4);
  if (out[0].dtype != DType::kF32 || out[0].shape != Shape{rows, 4})
    return ::testing::AssertionFailure() << "output is " << dtype_name(out[0].dtype) << " " << to_string(out[0].shape);
  for (size_t i = 0; i < a.size(); ++i)
    if (out[0].as<float>()[i] != a[i] + b[i % 4])
      return ::testing::AssertionFailure() << "element " << i << " is " << out[0].as<float>()[i] << ", want "
                                           << a[i] + b[i % 4];
  return ::testing::AssertionSuccess();
}

// A bare DEALER socket: whatever frames we like, no Hello, no checks.
class RawSocket {
 public:
  explicit RawSocket(const std::string& endpoint) : socket_(context_, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.connect(endpoint);
  }
  void send(const std::vector<std::string>& frames) {
    for (size_t i = 0; i < frames.size(); ++i)
      (void)socket_.send(zmq::buffer(frames[i]), i + 1 == frames.size() ? zmq::send_flags::none : zmq::send_flags::sndmore);
  }
  // The next message's frames, or nothing within `timeout`.
  std::optional<std::vector<std::string>> receive(std::chrono::milliseconds timeout) {
    zmq::pollitem_t items[] = {{socket_.handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, 1, timeout);
    if (!(items[0].revents & ZMQ_POLLIN)) return std::nullopt;
    std::vector<std::string> frames;
    do {
      zmq::message_t frame;
      (void)socket_.recv(frame);
      frames.push_back(frame.to_string());
    } while (socket_.get(zmq::sockopt::rcvmore));
    return frames;
  }

 private:
  zmq::context_t context_{1};
  zmq::socket_t socket_;
};

std::string bytes_of(const void* data, size_t n) { return std::string(static_cast<const char*>(data), n); }

// ---------------------------------------------------------------------------------

// 1. Another client cannot touch a session without its token, whatever it knows.
TEST(Rpc, SessionsArePrivateToTheirToken) {
  LoopbackServer server;
  auto a = server.connect("a");
  auto b = server.connect("b");
  const uint64_t model = a->load_model("gpt2-tiny")->model_id();
  RemoteSession mine = *a->open_session(model, 64);
  RemoteSession theirs = *b->open_session(model, 64);
  ASSERT_NE(mine.token(), theirs.token());
  ASSERT_EQ(mine.token().size(), 32u);

  const json before = stats_of(*b);
  const std::vector<int32_t> prompt = prompt_of(6);
  std::string flipped = mine.token();
  flipped.back() = flipped.back() == '0' ? '1' : '0';
  const std::vector<std::string> wrong_tokens = {"", "not-a-token", theirs.token(), mine.token().substr(0, 31), flipped,
                                                 mine.token() + "0"};
  int refusals = 0;
  for (const std::string& token : wrong_tokens) {
    SCOPED_TRACE("token '" + token + "'");
    RemoteSession intruder = b->attach(mine.id(), token);
    Result<RemoteForwardResult> forward = intruder.forward(prompt);
    EXPECT_EQ(forward.status().code(), StatusCode::kPermissionDenied) << forward.status().to_string();
    Result<RemoteGenerateResult> generate = intruder.generate(prompt, 4);
    EXPECT_EQ(generate.status().code(), StatusCode::kPermissionDenied) << generate.status().to_string();
    Status signal = intruder.signal(rpc::SignalPhase::IO_WAIT, 1000);
    EXPECT_EQ(signal.code(), StatusCode::kPermissionDenied) << signal.to_string();
    Result<double> heartbeat = intruder.heartbeat();
    EXPECT_EQ(heartbeat.status().code(), StatusCode::kPermissionDenied) << heartbeat.status().to_string();
    Status close = intruder.close();
    EXPECT_EQ(close.code(), StatusCode::kPermissionDenied) << close.to_string();
    refusals += 5;
  }
  const json after = stats_of(*b);
  EXPECT_EQ(error_count(after, "bad_token"), error_count(before, "bad_token") + static_cast<uint64_t>(refusals));
  EXPECT_EQ(total_errors(after), total_errors(before) + static_cast<uint64_t>(refusals)) << after["counters"].dump();
  EXPECT_EQ(session_ids(after), session_ids(before));
  // Nothing ran on the session: no tokens in it, still COMPUTE.
  for (const json& s : after["sessions"]) {
    EXPECT_EQ(s["length"], 0) << s.dump();
    EXPECT_EQ(s["phase"], "COMPUTE") << s.dump();
  }

  // The owner's session is untouched: it generates what a fresh session generates.
  Result<RemoteGenerateResult> owned = mine.generate(prompt, 10);
  ASSERT_TRUE(owned.ok()) << owned.status().to_string();
  EXPECT_EQ(owned->tokens.size(), 10u);
  EXPECT_EQ(owned->tokens, generate_on_fresh_session(*a, model, prompt, 10));
  // The other client's own session works as usual.
  Result<RemoteGenerateResult> other = theirs.generate(prompt, 10);
  ASSERT_TRUE(other.ok()) << other.status().to_string();
  EXPECT_EQ(other->tokens, owned->tokens);
  EXPECT_TRUE(mine.close().ok());
  EXPECT_TRUE(theirs.close().ok());
  // Closed: now unknown, not forbidden.
  EXPECT_EQ(mine.forward(prompt).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(error_count(stats_of(*a), "bad_token"), error_count(before, "bad_token") + static_cast<uint64_t>(refusals));
}

// Session tokens must not be predictable from tokens a client has seen: otherwise
// "private" sessions are not. A client that opens 156 sessions sees 312 consecutive
// 64-bit outputs of the server's generator; were it a Mersenne Twister (mt19937_64),
// those give away its whole state and every later token.
namespace mt64 {
constexpr uint64_t kA = 0xB5026F5AA96619E9ull, kB = 0x71D67FFFEDA60000ull, kC = 0xFFF7EEE000000000ull,
                   kD = 0x5555555555555555ull;
constexpr uint64_t kUpper = ~uint64_t{0} << 31, kLower = (uint64_t{1} << 31) - 1;
uint64_t temper(uint64_t y) {
  y ^= (y >> 29) & kD;
  y ^= (y << 17) & kB;
  y ^= (y << 37) & kC;
  return y ^ (y >> 43);
}
uint64_t untemper(uint64_t y) {
  y ^= y >> 43;
  y ^= (y << 37) & kC;
  uint64_t x = y;
  for (int i = 0; i < 4; ++i) x = y ^ ((x << 17) & kB);
  y = x;
  for (int i = 0; i < 3; ++i) x = y ^ ((x >> 29) & kD);
  return x;
}
// The outputs after `seen` (at least 312 consecutive outputs).
std::vector<uint64_t> predict(const std::vector<uint64_t>& seen, size_t count) {
  std::vector<uint64_t> state;
  for (uint64_t v : seen) state.push_back(untemper(v));
  std::vector<uint64_t> next;
  for (size_t k = 0; k < count; ++k) {
    const size_t i = state.size();
    const uint64_t y = (state[i - 312] & kUpper) | (state[i - 311] & kLower);
    state.push_back(state[i - 156] ^ (y >> 1) ^ ((y & 1) ? kA : 0));
    next.push_back(temper(state.back()));
  }
  return next;
}
}  // namespace mt64

TEST(Rpc, SessionTokensAreNotPredictable) {
  {  // the model of the generator is right
    std::mt19937_64 reference(12345);
    std::vector<uint64_t> seen;
    for (int i = 0; i < 312; ++i) seen.push_back(reference());
    ASSERT_EQ(mt64::untemper(mt64::temper(0x0123456789abcdefull)), 0x0123456789abcdefull);
    const std::vector<uint64_t> next = mt64::predict(seen, 2);
    ASSERT_EQ(next[0], reference());
    ASSERT_EQ(next[1], reference());
  }
  LoopbackServer server;
  auto attacker = server.connect("attacker");
  auto victim = server.connect("victim");
  const uint64_t model = attacker->load_model("gpt2-tiny")->model_id();
  std::vector<uint64_t> high_first;  // the token's two halves in either order of generation
  std::vector<uint64_t> low_first;
  for (int i = 0; i < 156; ++i) {
    RemoteSession s = *attacker->open_session(model, 4);
    ASSERT_EQ(s.token().size(), 32u);
    const uint64_t high = std::stoull(s.token().substr(0, 16), nullptr, 16);
    const uint64_t low = std::stoull(s.token().substr(16), nullptr, 16);
    high_first.insert(high_first.end(), {high, low});
    low_first.insert(low_first.end(), {low, high});
    ASSERT_TRUE(s.close().ok());
  }
  RemoteSession theirs = *victim->open_session(model, 4);
  std::set<std::string> guesses;
  for (const std::vector<uint64_t>* seen : {&high_first, &low_first}) {
    const std::vector<uint64_t> next = mt64::predict(*seen, 2);
    guesses.insert(fmt::format("{:016x}{:016x}", next[0], next[1]));
    guesses.insert(fmt::format("{:016x}{:016x}", next[1], next[0]));
  }
  EXPECT_FALSE(guesses.contains(theirs.token())) << "the victim's token " << theirs.token()
                                                 << " was predicted from the attacker's own tokens";
  for (const std::string& guess : guesses) {
    Result<RemoteForwardResult> stolen = attacker->attach(theirs.id(), guess).forward(prompt_of(2));
    EXPECT_EQ(stolen.status().code(), StatusCode::kPermissionDenied) << "forward on another client's session with a guessed token";
  }
}

// 2. A closed session's arena goes to the next session; the Data segment does not grow.
TEST(Rpc, AClosedSessionsArenaIsReused) {
  LoopbackServer server;
  auto a = server.connect("a");
  auto b = server.connect("b");
  const uint64_t model = a->load_model("gpt2-tiny")->model_id();
  RemoteSession first = *a->open_session(model, 32);
  const json open = stats_of(*a)["vmu"];
  EXPECT_EQ(open["data"]["arenas_live"], 1);
  EXPECT_EQ(open["data"]["arenas_reused"], 0);
  ASSERT_TRUE(first.generate(prompt_of(4), 4).ok());
  ASSERT_TRUE(first.close().ok());
  const json closed = stats_of(*a)["vmu"];
  EXPECT_EQ(closed["data"]["arenas_live"], 0);
  EXPECT_EQ(closed["data"]["capacity"], open["data"]["capacity"]);

  RemoteSession second = *b->open_session(model, 32);
  const json reopened = stats_of(*b)["vmu"];
  EXPECT_EQ(reopened["data"]["arenas_live"], 1);
  EXPECT_EQ(reopened["data"]["arenas_reused"], open["data"]["arenas_reused"].get<uint64_t>() + 1);
  EXPECT_EQ(reopened["data"]["capacity"], open["data"]["capacity"]);
  EXPECT_EQ(reopened["free"], closed["free"]);  // nothing new taken from the region
  // The reused arena starts clean: the new session generates what the first would have.
  Result<RemoteGenerateResult> generated = second.generate(prompt_of(4), 4);
  ASSERT_TRUE(generated.ok()) << generated.status().to_string();
  EXPECT_EQ(first.forward(prompt_of(1)).status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(second.close().ok());
  EXPECT_EQ(generate_on_fresh_session(*a, model, prompt_of(4), 4), generated->tokens);
}

// The request path pinned to one CPU (--pin-cpu): the RPC and scheduler threads share
// it, answers are the same as unpinned, and a CPU that does not exist is refused.
TEST(Rpc, APinnedRequestPathServesTheSameAnswers) {
  rpc::ServerOptions pinned_options = loopback_options();
  pinned_options.pin_cpu = startup_cpu(0);
  std::vector<int32_t> pinned_tokens;
  {
    LoopbackServer pinned(pinned_options);
    auto client = pinned.connect();
    const json threads = stats_of(*client)["threads"];
    EXPECT_EQ(threads["pin_cpu"], startup_cpu(0));
    const uint64_t model = client->load_model("gpt2-tiny")->model_id();
    pinned_tokens = generate_on_fresh_session(*client, model, prompt_of(5), 6);
  }
  LoopbackServer unpinned;
  auto client = unpinned.connect();
  const uint64_t model = client->load_model("gpt2-tiny")->model_id();
  EXPECT_EQ(generate_on_fresh_session(*client, model, prompt_of(5), 6), pinned_tokens);

  rpc::ServerOptions bad = loopback_options();
  bad.pin_cpu = 1 << 20;
  Result<std::unique_ptr<rpc::Server>> refused = rpc::Server::create(bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("--pin-cpu"), std::string::npos) << refused.status().message();
}

// 3. 64 clients on 64 threads, 50 mixed calls each, no errors, right answers.
TEST(Rpc, SixtyFourConcurrentClients) {
  constexpr int kClients = 64, kCalls = 50, kPrompts = 4, kNewTokens = 3;
  LoopbackServer server;
  auto reference_client = server.connect("reference");
  const uint64_t model = reference_client->load_model("gpt2-tiny")->model_id();
  // The k-th Generate on a session continues the k-1 before it: reference chains, one
  // per prompt, computed once.
  constexpr int kMaxGenerates = (kCalls + 2) / 3;
  std::vector<std::vector<std::vector<int32_t>>> reference(kPrompts);
  for (int p = 0; p < kPrompts; ++p) {
    RemoteSession session = *reference_client->open_session(model);
    ASSERT_GE(session.capacity(), kMaxGenerates * (3 + kNewTokens));
    for (int k = 0; k < kMaxGenerates; ++k) {
      Result<RemoteGenerateResult> r = session.generate(prompt_of(3, p), kNewTokens);
      ASSERT_TRUE(r.ok()) << r.status().to_string();
      reference[static_cast<size_t>(p)].push_back(r->tokens);
    }
    ASSERT_TRUE(session.close().ok());
  }
  const json before = stats_of(*reference_client);

  std::mutex mutex;
  std::vector<std::string> failures;
  auto fail = [&](int client, int call, const std::string& what) {
    std::lock_guard lock(mutex);
    failures.push_back("client " + std::to_string(client) + " call " + std::to_string(call) + ": " + what);
  };
  std::atomic<int> generates{0}, graphs{0}, stats{0};
  std::latch ready(kClients);
  std::vector<std::thread> threads;
  for (int t = 0; t < kClients; ++t) {
    threads.emplace_back([&, t] {
      try {
        auto client = server.connect("client-" + std::to_string(t));
        RemoteSession session = *client->open_session(model);
        const Graph graph = add_graph();
        const float b[4] = {static_cast<float>(t), 0.5f, -1.0f * static_cast<float>(t), 1000.0f};
        RemoteGraph remote(*client, graph, {TensorView::contiguous(const_cast<float*>(b), {4}, DType::kF32)});
        ready.arrive_and_wait();
        int generate_calls = 0;
        for (int i = 0; i < kCalls; ++i) {
          switch ((i + t) % 3) {
            case 0: {
              Result<RemoteGenerateResult> r = session.generate(prompt_of(3, t % kPrompts), kNewTokens);
              if (!r.ok()) {
                fail(t, i, r.status().to_string());
              } else if (r->tokens != reference[static_cast<size_t>(t % kPrompts)][static_cast<size_t>(generate_calls)]) {
                fail(t, i, "generated tokens differ from the reference");
              }
              ++generate_calls;
              ++generates;
              break;
            }
            case 1: {
              const int rows = 1 + (i % 3);
              std::vector<float> a(static_cast<size_t>(rows) * 4);
              for (size_t k = 0; k < a.size(); ++k) a[k] = static_cast<float>(t * 1000 + i * 10) + static_cast<float>(k);
              const TensorView io = TensorView::contiguous(a.data(), {rows, 4}, DType::kF32);
              Result<std::vector<HostTensor>> out = remote.run(std::span(&io, 1), {.seq = rows, .past = 0});
              if (!out.ok()) {
                fail(t, i, out.status().to_string());
              } else if (::testing::AssertionResult sum = is_sum(*out, a, b); !sum) {
                fail(t, i, std::string("add result: ") + sum.message());
              }
              ++graphs;
              break;
            }
            default: {
              Result<json> s = client->stats();
              if (!s.ok()) fail(t, i, s.status().to_string());
              else if (!s->contains("counters") || !s->contains("vmu")) fail(t, i, "stats without counters / vmu");
              ++stats;
            }
          }
        }
        if (Status closed = session.close(); !closed.ok()) fail(t, kCalls, closed.to_string());
      } catch (const std::exception& e) {
        fail(t, -1, e.what());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_TRUE(failures.empty()) << failures.size() << " failures, first: " << failures.front();
  EXPECT_EQ(generates + graphs + stats, kClients * kCalls);

  const json after = stats_of(*reference_client);
  const json& counters = after["counters"];
  EXPECT_EQ(total_errors(after), 0u) << counters["errors"].dump();
  const json& by_type = counters["requests_by_type"];
  EXPECT_EQ(by_type["generate"].get<int>() - before["counters"]["requests_by_type"]["generate"].get<int>(), generates.load());
  EXPECT_EQ(by_type["run_graph"].get<int>(), graphs.load());
  EXPECT_EQ(counters["graphs_uploaded"], kClients);  // every client's own weights, once
  EXPECT_EQ(counters["sessions_opened"], kClients + kPrompts);
  EXPECT_EQ(counters["sessions_closed"], kClients + kPrompts);
  EXPECT_EQ(counters["requests"].get<uint64_t>(), counters["replies"].get<uint64_t>() + 1);  // + this Stats
  EXPECT_TRUE(after["sessions"].empty());
  EXPECT_EQ(after["vmu"]["stack"]["used"], 0);
  EXPECT_EQ(after["vmu"]["data"]["arenas_live"], 0);
}

// 4. Thousands of malformed requests: each gets an error reply, nothing leaks, the
// server keeps serving.
class GarbageCases {
 public:
  GarbageCases(uint64_t real_model, uint64_t real_session, uint64_t known_graph)
      : real_model_(real_model), real_session_(real_session), known_graph_(known_graph) {
    valid_bases();
  }

  struct Case {
    std::vector<std::string> frames;
    std::string what;
  };

  Case next(int i) {
    switch (i % 8) {
      case 0: return {{random_bytes(rng_() % 300)}, "random single frame"};
      case 1: {
        std::vector<std::string> frames;
        const size_t n = 2 + rng_() % 5;
        for (size_t f = 0; f < n; ++f) frames.push_back(random_bytes(rng_() % 64));
        return {frames, "random frames"};
      }
      case 2: {  // a valid header, bit flips
        Case c = base();
        const size_t flips = 1 + rng_() % 3;
        std::string& header = c.frames[0];
        for (size_t f = 0; f < flips && !header.empty(); ++f) header[rng_() % header.size()] ^= static_cast<char>(1u << (rng_() % 8));
        c.what += " bit-flipped";
        return c;
      }
      case 3: {  // a valid header, truncated
        Case c = base();
        c.frames[0].resize(rng_() % c.frames[0].size());
        c.what += " truncated";
        return c;
      }
      case 4: return bad_tensor_meta();
      case 5: {  // no body
        rpc::Request request;
        request.set_correlation_id(rng_());
        request.set_session_id(rng_() % 2 ? real_session_ : 0);
        std::vector<std::string> frames;
        if (rng_() % 2) {
          const float x[2] = {1, 2};
          rpc::TensorMeta* meta = request.add_tensors();
          meta->set_dtype("f32");
          meta->add_shape(2);
          frames.push_back(request.SerializeAsString());
          frames.push_back(bytes_of(x, sizeof x));
        } else {
          frames.push_back(request.SerializeAsString());
        }
        return {frames, "no body"};
      }
      case 6: {  // a valid request as is: each one fails on the server
        Case c = base();
        c.what += " as is";
        return c;
      }
      default: {  // a valid header with extra garbage frames
        Case c = base();
        c.frames.push_back(random_bytes(rng_() % 32));
        c.what += " plus a frame";
        return c;
      }
    }
  }

 private:
  Case base() { return bases_[rng_() % bases_.size()]; }

  std::string random_bytes(size_t n) {
    std::string s(n, '\0');
    for (char& c : s) c = static_cast<char>(rng_());
    return s;
  }

  void add(rpc::Request request, std::vector<std::string> tensor_frames, const std::string& what,
           const std::vector<std::pair<std::string, std::vector<int64_t>>>& metas = {}) {
    request.set_correlation_id(1000 + bases_.size());
    for (const auto& [dtype, shape] : metas) {
      rpc::TensorMeta* meta = request.add_tensors();
      meta->set_dtype(dtype);
      for (int64_t d : shape) meta->add_shape(d);
    }
    std::vector<std::string> frames = {request.SerializeAsString()};
    frames.insert(frames.end(), tensor_frames.begin(), tensor_frames.end());
    bases_.push_back({frames, what});
  }

  // Requests that parse and decode but that the server must refuse.
  void valid_bases() {
    const std::string row(16, '\0');  // f32 [1, 4]
    rpc::Request r;
    r.set_session_id(424242);
    r.set_session_token("0123456789abcdef0123456789abcdef");
    r.mutable_forward()->add_tokens(1);
    r.mutable_forward()->add_tokens(2);
    add(r, {}, "forward on an unknown session");
    r.set_session_id(real_session_);
    add(r, {}, "forward with a wrong token");
    r.set_session_token("");
    add(r, {}, "forward with no token");
    r.set_session_id(424242);
    r.mutable_generate()->add_prompt(3);
    r.mutable_generate()->set_max_new_tokens(4);
    add(r, {}, "generate on an unknown session");
    r.mutable_signal_phase()->set_phase(rpc::SignalPhase::IO_WAIT);
    r.mutable_signal_phase()->set_estimated_resume_ms(10);
    add(r, {}, "signal on an unknown session");
    r.mutable_heartbeat();
    add(r, {}, "heartbeat on an unknown session");
    r.mutable_close_session();
    add(r, {}, "close of an unknown session");
    r = {};
    r.mutable_hello()->set_protocol_version(99);
    r.mutable_hello()->set_client_name("garbage");
    add(r, {}, "hello of another version");
    r = {};
    r.mutable_open_session()->set_model_id(777);
    add(r, {}, "open session on an unknown model");
    r = {};
    r.mutable_load_model()->set_source("/nonexistent/model-dir");
    add(r, {}, "load of a missing model");
    r = {};
    r.mutable_load_model()->set_source("gpt2-tiny");
    r.mutable_load_model()->set_dtype("i32");
    add(r, {}, "load with an integer dtype");
    r = {};
    r.mutable_run_graph()->set_graph_hash(0x1234567);
    r.mutable_run_graph()->set_seq(1);
    add(r, {row}, "run of an unknown graph", {{"f32", {1, 4}}});
    r.mutable_run_graph()->set_graph_hash(known_graph_);
    add(r, {row, row}, "run of a known graph with two io inputs", {{"f32", {1, 4}}, {"f32", {1, 4}}});
    add(r, {}, "run of a known graph without inputs");

    const Graph graph = add_graph();
    rpc::GraphDef def;
    rpc::graph_to_proto(graph, def);
    r = {};
    r.mutable_run_graph()->set_seq(1);
    *r.mutable_run_graph()->mutable_graph() = def;
    r.mutable_run_graph()->mutable_graph()->mutable_nodes(0)->set_op("addd");
    add(r, {row.substr(0, 16), row}, "run of a graph with an unknown op", {{"f32", {4}}, {"f32", {1, 4}}});
    *r.mutable_run_graph()->mutable_graph() = def;
    r.mutable_run_graph()->mutable_graph()->mutable_nodes(0)->set_inputs(1, 2);  // reads its own output
    add(r, {row.substr(0, 16), row}, "run of a graph with a cycle", {{"f32", {4}}, {"f32", {1, 4}}});
    *r.mutable_run_graph()->mutable_graph() = def;
    add(r, {}, "upload without the weight");
    add(r, {row.substr(0, 16)}, "upload without the io input", {{"f32", {4}}});
    add(r, {row.substr(0, 16), row + row}, "upload with an io input of the wrong shape", {{"f32", {4}}, {"f32", {2, 4}}});
    add(r, {row + row, row}, "upload with a weight of the wrong shape", {{"f32", {8}}, {"f32", {1, 4}}});
    add(r, {row, row}, "upload with a weight of the wrong dtype", {{"i32", {4}}, {"f32", {1, 4}}});
    r.mutable_run_graph()->mutable_graph()->mutable_inputs(0)->mutable_shape(1)->set_value(int64_t{1} << 40);
    r.mutable_run_graph()->mutable_graph()->mutable_inputs(1)->mutable_shape(0)->set_value(int64_t{1} << 40);
    add(r, {row, row}, "upload of a graph with a huge io input", {{"f32", {4}}, {"f32", {1, 4}}});
    r.mutable_run_graph()->set_seq(int64_t{1} << 40);
    *r.mutable_run_graph()->mutable_graph() = def;
    add(r, {row, row}, "upload run at a huge seq", {{"f32", {4}}, {"f32", {1, 4}}});
  }

  Case bad_tensor_meta() {
    rpc::Request request;
    request.set_correlation_id(rng_());
    request.mutable_stats();
    const float data[8] = {};
    std::vector<std::string> frames = {""};
    std::string what;
    rpc::TensorMeta* meta = request.add_tensors();
    meta->set_dtype("f32");
    meta->add_shape(2);
    meta->add_shape(4);
    switch (rng_() % 7) {
      case 0:
        frames.push_back(bytes_of(data, sizeof data - 1 - rng_() % 8));
        what = "too few bytes";
        break;
      case 1:
        frames.push_back(bytes_of(data, sizeof data) + "xyz");
        what = "too many bytes";
        break;
      case 2:
        meta->set_dtype(rng_() % 2 ? "f64" : "");
        frames.push_back(bytes_of(data, sizeof data));
        what = "bad dtype";
        break;
      case 3:
        meta->set_shape(rng_() % 2, -static_cast<int64_t>(1 + rng_() % 4));
        frames.push_back(bytes_of(data, sizeof data));
        what = "negative dimension";
        break;
      case 4:
        for (int k = 0; k < 7; ++k) meta->add_shape(1);
        frames.push_back(bytes_of(data, sizeof data));
        what = "rank 9";
        break;
      case 5:
        meta->set_shape(0, int64_t{1} << 40);
        meta->set_shape(1, int64_t{1} << 40);
        frames.push_back(bytes_of(data, sizeof data));
        what = "overflowing shape";
        break;
      default:
        if (rng_() % 2) {
          frames.push_back(bytes_of(data, sizeof data));
          frames.push_back(bytes_of(data, sizeof data));
          what = "more frames than metas";
        } else {
          request.add_tensors()->set_dtype("f32");
          frames.push_back(bytes_of(data, sizeof data));
          what = "more metas than frames";
        }
    }
    frames[0] = request.SerializeAsString();
    return {frames, "stats with tensor meta: " + what};
  }

  uint64_t real_model_, real_session_, known_graph_;
  std::vector<Case> bases_;
  std::mt19937_64 rng_{20240611};

 public:
  // May a request made of `frames` succeed on the server (mutations can make valid
  // requests)? Those that would change state visibly (open a session on the real
  // model, load a real model) are not sent at all.
  enum class Outcome { kMustFail, kMayWork, kDoNotSend };
  Outcome classify(const std::vector<std::string>& frames) const {
    std::vector<std::string_view> views(frames.begin(), frames.end());
    rpc::DecodeLimits limits;
    limits.max_message_bytes = size_t{1} << 20;
    Result<rpc::DecodedRequest> decoded = rpc::decode_request(views, limits);
    if (!decoded.ok()) return Outcome::kMustFail;
    const rpc::Request& r = decoded->request;
    switch (r.body_case()) {
      case rpc::Request::kStats: return Outcome::kMayWork;
      case rpc::Request::kHello: return r.hello().protocol_version() == rpc::kProtocolVersion ? Outcome::kMayWork : Outcome::kMustFail;
      case rpc::Request::kOpenSession: return r.open_session().model_id() == real_model_ ? Outcome::kDoNotSend : Outcome::kMustFail;
      case rpc::Request::kLoadModel: return preset_config(r.load_model().source()).ok() ? Outcome::kDoNotSend : Outcome::kMustFail;
      case rpc::Request::kRunGraph:
        if (r.run_graph().has_graph()) {
          return rpc::graph_from_proto(r.run_graph().graph()).ok() ? Outcome::kMayWork : Outcome::kMustFail;
        }
        return r.run_graph().graph_hash() == known_graph_ ? Outcome::kMayWork : Outcome::kMustFail;
      default:  // session calls: never with the real token
        return Outcome::kMustFail;
    }
  }
};

TEST(Rpc, GarbageGetsErrorRepliesAndLeaksNothing) {
  rpc::ServerOptions options = loopback_options();
  options.max_request_mb = 1;
  LoopbackServer server(options);
  auto client = server.connect();
  const uint64_t model = client->load_model("gpt2-tiny")->model_id();
  RemoteSession session = *client->open_session(model, 64);
  const Graph graph = add_graph();
  const float b[4] = {1, 2, 3, 4};
  RemoteGraph remote(*client, graph, {TensorView::contiguous(const_cast<float*>(b), {4}, DType::kF32)});
  std::vector<float> a = {0, 0, 0, 0};
  const TensorView io = TensorView::contiguous(a.data(), {1, 4}, DType::kF32);
  ASSERT_TRUE(remote.run(std::span(&io, 1), {.seq = 1, .past = 0}).ok());
  const json before = stats_of(*client);

  DJINN_QUIET_PROTOBUF();
  RawSocket raw(server.endpoint());
  GarbageCases cases(model, session.id(), remote.id());
  constexpr int kCases = 4000;
  int sent = 0, error_replies = 0, ok_replies = 0, missing = 0;
  auto exchange = [&](const std::vector<std::string>& frames, GarbageCases::Outcome outcome, const std::string& what) {
    ++sent;
    raw.send(frames);
    std::optional<std::vector<std::string>> reply_frames = raw.receive(5s);
    if (!reply_frames) {
      ADD_FAILURE() << "no reply to " << what;
      ++missing;
      return;
    }
    rpc::Reply reply;
    ASSERT_TRUE(reply.ParseFromString(reply_frames->at(0))) << what << ": the reply does not parse";
    rpc::Request header;
    if (header.ParseFromString(frames[0])) {
      EXPECT_EQ(reply.correlation_id(), header.correlation_id()) << what << ": correlation id not echoed";
    }
    if (reply.has_error()) {
      ++error_replies;
      EXPECT_FALSE(reply.error().code().empty()) << what;
      EXPECT_FALSE(reply.error().message().empty()) << what;
      EXPECT_EQ(reply.body_case(), rpc::Reply::BODY_NOT_SET) << what;
      EXPECT_EQ(reply.tensors_size(), 0) << what;
      EXPECT_EQ(reply_frames->size(), 1u) << what;
    } else {
      ++ok_replies;
      EXPECT_EQ(outcome, GarbageCases::Outcome::kMayWork) << what << " succeeded: " << reply.DebugString();
      EXPECT_EQ(reply_frames->size(), static_cast<size_t>(reply.tensors_size()) + 1) << what;
    }
  };
  for (int i = 0; i < kCases && missing < 3; ++i) {
    const GarbageCases::Case c = cases.next(i);
    const GarbageCases::Outcome outcome = cases.classify(c.frames);
    if (outcome == GarbageCases::Outcome::kDoNotSend) continue;
    exchange(c.frames, outcome, "case " + std::to_string(i) + " (" + c.what + ")");
  }
  // Oversized: a 2 MiB tensor frame under a valid header, and a 1.5 MiB lone frame,
  // against a 1 MiB limit.
  {
    rpc::Request big;
    big.set_correlation_id(77);
    big.mutable_stats();
    rpc::TensorMeta* meta = big.add_tensors();
    meta->set_dtype("f32");
    meta->add_shape(512 * 1024);
    exchange({big.SerializeAsString(), std::string(size_t{2} << 20, 'x')}, GarbageCases::Outcome::kMustFail, "2 MiB frame");
    exchange({std::string(size_t{3} << 19, 'y')}, GarbageCases::Outcome::kMustFail, "1.5 MiB frame");
  }
  // Past what ZeroMQ itself accepts (limit + 1 MiB): dropped, the peer disconnected.
  {
    RawSocket huge(server.endpoint());
    huge.send({std::string(size_t{5} << 20, 'z')});
    EXPECT_FALSE(huge.receive(300ms).has_value());
  }
  EXPECT_EQ(missing, 0);
  EXPECT_GT(sent, kCases * 9 / 10);
  EXPECT_GT(error_replies, kCases * 8 / 10);

  // Still serving, every refusal counted, nothing left behind.
  auto after_client = server.connect("after");
  const json after = stats_of(*after_client);
  EXPECT_EQ(total_errors(after) - total_errors(before), static_cast<uint64_t>(error_replies)) << after["counters"]["errors"].dump();
  for (const char* kind : {"malformed", "too_large", "unknown_session", "bad_token", "version_mismatch", "unknown_model",
                           "load_model_failed", "unknown_graph", "bad_graph", "bad_tensor"})
    EXPECT_GT(error_count(after, kind), error_count(before, kind)) << kind << " in " << after["counters"]["errors"].dump();
  EXPECT_EQ(after["counters"]["requests"].get<uint64_t>() - before["counters"]["requests"].get<uint64_t>(),
            static_cast<uint64_t>(sent) + 2);  // + the Hello and Stats of after_client
  EXPECT_EQ(after["vmu"]["stack"]["used"], 0);
  EXPECT_EQ(after["vmu"]["data"]["arenas_live"], 1);
  EXPECT_EQ(after["vmu"]["text"]["used"], before["vmu"]["text"]["used"]);
  EXPECT_EQ(session_ids(after), session_ids(before));
  EXPECT_EQ(after["sessions"][0]["length"], 0);
  EXPECT_EQ(after["models"].size(), 1u);
  // The real session and graph are untouched.
  Result<RemoteGenerateResult> generated = session.generate(prompt_of(5), 6);
  ASSERT_TRUE(generated.ok()) << generated.status().to_string();
  EXPECT_EQ(generated->tokens, generate_on_fresh_session(*after_client, model, prompt_of(5), 6));
  a = {1, 1, 1, 1};
  Result<std::vector<HostTensor>> sum = remote.run(std::span(&io, 1), {.seq = 1, .past = 0});
  ASSERT_TRUE(sum.ok()) << sum.status().to_string();
  EXPECT_TRUE(is_sum(*sum, a, b));
}

// 5. A session nobody talks to is closed when its lease runs out; IO_WAIT with an
// estimated resume time extends the lease past it.
TEST(Rpc, ExpiredLeasesGiveTheArenaBack) {
  rpc::ServerOptions options = loopback_options();
  options.session_lease_s = 0.3;
  LoopbackServer server(options);
  auto client = server.connect();
  const uint64_t model = client->load_model("gpt2-tiny")->model_id();
  RemoteSession session = *client->open_session(model, 32);
  ASSERT_TRUE(session.forward(prompt_of(3)).ok());
  json stats = stats_of(*client);
  EXPECT_EQ(stats["vmu"]["data"]["arenas_live"], 1);
  EXPECT_EQ(stats["sessions"].size(), 1u);
  std::this_thread::sleep_for(1s);
  stats = stats_of(*client);  // Stats names no session: it renews nothing
  EXPECT_EQ(stats["vmu"]["data"]["arenas_live"], 0);
  EXPECT_EQ(stats["counters"]["leases_expired"], 1);
  EXPECT_EQ(stats["counters"]["sessions_closed"], 1);
  EXPECT_TRUE(stats["sessions"].empty());
  EXPECT_EQ(session.forward(prompt_of(1)).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(session.heartbeat().status().code(), StatusCode::kNotFound);

  // IO_WAIT for an expected 1.5 s: still there well past the plain 0.3 s lease.
  RemoteSession waiting = *client->open_session(model, 32);
  ASSERT_TRUE(waiting.forward(prompt_of(3)).ok());
  ASSERT_TRUE(waiting.signal(rpc::SignalPhase::IO_WAIT, 1500).ok());
  std::this_thread::sleep_for(800ms);
  stats = stats_of(*client);
  ASSERT_EQ(stats["sessions"].size(), 1u);
  EXPECT_EQ(stats["sessions"][0]["phase"], "IO_WAIT");
  EXPECT_EQ(stats["sessions"][0]["length"], 3);
  EXPECT_EQ(stats["counters"]["leases_expired"], 1);
  EXPECT_EQ(stats["vmu"]["data"]["arenas_live"], 1);
  // Back to COMPUTE: the plain lease again, and nobody talks.
  ASSERT_TRUE(waiting.signal(rpc::SignalPhase::COMPUTE).ok());
  Result<double> left = waiting.heartbeat();
  ASSERT_TRUE(left.ok()) << left.status().to_string();
  EXPECT_LE(*left, 0.3);
  std::this_thread::sleep_for(800ms);
  stats = stats_of(*client);
  EXPECT_TRUE(stats["sessions"].empty());
  EXPECT_EQ(stats["counters"]["leases_expired"], 2);
  EXPECT_EQ(stats["vmu"]["data"]["arenas_live"], 0);
  EXPECT_EQ(waiting.forward(prompt_of(1)).status().code(), StatusCode::kNotFound);
}

// 6. Another protocol version is refused with a message saying which one we speak.
TEST(Rpc, HelloOfAnotherVersionIsRefused) {
  LoopbackServer server;
  RawSocket raw(server.endpoint());
  rpc::Request hello;
  hello.set_correlation_id(5);
  hello.mutable_hello()->set_protocol_version(99);
  hello.mutable_hello()->set_client_name("from-the-future");
  raw.send({hello.SerializeAsString()});
  std::optional<std::vector<std::string>> frames = raw.receive(5s);
  ASSERT_TRUE(frames.has_value());
  ASSERT_EQ(frames->size(), 1u);
  rpc::Reply reply;
  ASSERT_TRUE(reply.ParseFromString(frames->at(0)));
  EXPECT_EQ(reply.correlation_id(), 5u);
  ASSERT_TRUE(reply.has_error());
  EXPECT_EQ(rpc::status_code_from_wire(reply.error().code()), StatusCode::kInvalidArgument);
  EXPECT_NE(reply.error().message().find("speaks version 1"), std::string::npos) << reply.error().message();
  EXPECT_NE(reply.error().message().find("99"), std::string::npos) << reply.error().message();
  EXPECT_EQ(reply.body_case(), rpc::Reply::BODY_NOT_SET);
  // The current version is welcome.
  hello.set_correlation_id(6);
  hello.mutable_hello()->set_protocol_version(rpc::kProtocolVersion);
  raw.send({hello.SerializeAsString()});
  frames = raw.receive(5s);
  ASSERT_TRUE(frames.has_value());
  ASSERT_TRUE(reply.ParseFromString(frames->at(0)));
  EXPECT_FALSE(reply.has_error()) << reply.error().message();
  EXPECT_EQ(reply.hello().protocol_version(), rpc::kProtocolVersion);
  auto client = server.connect();
  EXPECT_EQ(error_count(stats_of(*client), "version_mismatch"), 1u);
}

// 7. RunGraph uploads once, then runs by hash.
TEST(Rpc, RunGraphUploadsOnceThenRunsByHash) {
  LoopbackServer server;
  auto client = server.connect();
  const Graph graph = add_graph();
  const float b[4] = {0.25f, -2.0f, 3.0f, 100.0f};
  RemoteGraph remote(*client, graph, {TensorView::contiguous(const_cast<float*>(b), {4}, DType::kF32)});
  EXPECT_FALSE(remote.uploaded());
  for (int run = 0; run < 4; ++run) {
    const int rows = 1 + run;
    std::vector<float> a(static_cast<size_t>(rows) * 4);
    for (size_t k = 0; k < a.size(); ++k) a[k] = static_cast<float>(run) * 7.5f + static_cast<float>(k);
    const TensorView io = TensorView::contiguous(a.data(), {rows, 4}, DType::kF32);
    Result<std::vector<HostTensor>> out = remote.run(std::span(&io, 1), {.seq = rows, .past = 0});
    ASSERT_TRUE(out.ok()) << out.status().to_string();
    EXPECT_TRUE(is_sum(*out, a, b)) << "run " << run;
    EXPECT_TRUE(remote.uploaded());
    const json counters = stats_of(*client)["counters"];
    EXPECT_EQ(counters["graphs_uploaded"], 1) << "run " << run;
    EXPECT_EQ(counters["graphs_stored"], 1) << "run " << run;
    EXPECT_EQ(counters["requests_by_type"]["run_graph"], run + 1);
  }
  const uint64_t id = remote.id();
  // The same graph with other weights is another graph on the server.
  const float other_b[4] = {1, 1, 1, 1};
  RemoteGraph other(*client, graph, {TensorView::contiguous(const_cast<float*>(other_b), {4}, DType::kF32)});
  std::vector<float> a = {1, 2, 3, 4};
  const TensorView io = TensorView::contiguous(a.data(), {1, 4}, DType::kF32);
  Result<std::vector<HostTensor>> out = other.run(std::span(&io, 1), {.seq = 1, .past = 0});
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_TRUE(is_sum(*out, a, other_b));
  EXPECT_NE(other.id(), id);
  out = remote.run(std::span(&io, 1), {.seq = 1, .past = 0});
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_TRUE(is_sum(*out, a, b));
  EXPECT_EQ(stats_of(*client)["counters"]["graphs_uploaded"], 2);

  // A hash the server never saw.
  rpc::Request request;
  request.mutable_run_graph()->set_graph_hash(id ^ 0x5a5a5a5a5a5a5a5aull);
  request.mutable_run_graph()->set_seq(1);
  Result<ReplyMessage> unknown = client->call(request, std::span(&io, 1));
  EXPECT_EQ(unknown.status().code(), StatusCode::kNotFound) << unknown.status().to_string();
  const json counters = stats_of(*client)["counters"];
  EXPECT_EQ(counters["errors"]["unknown_graph"], 1);
  EXPECT_EQ(counters["graphs_uploaded"], 2);
  EXPECT_EQ(stats_of(*client)["vmu"]["stack"]["used"], 0);
}

// 8. Twenty requests in flight on one Client, received in reverse order.
TEST(Rpc, ManyRequestsInFlightOnOneClient) {
  LoopbackServer server;
  auto client = server.connect();
  const Graph graph = add_graph();
  const float b[4] = {10, 20, 30, 40};
  RemoteGraph remote(*client, graph, {TensorView::contiguous(const_cast<float*>(b), {4}, DType::kF32)});
  ASSERT_TRUE(first_run(remote).ok());

  constexpr int kInFlight = 20;
  std::vector<std::vector<float>> inputs(kInFlight);
  std::vector<uint64_t> ids;
  for (int i = 0; i < kInFlight; ++i) {
    rpc::Request request;
    Result<uint64_t> id = internal_error("unsent");
    if (i % 2 == 0) {
      request.mutable_stats();
      id = client->send(request);
    } else {
      inputs[static_cast<size_t>(i)] = {static_cast<float>(i), static_cast<float>(-i), 0.5f, static_cast<float>(i * i)};
      const TensorView io = TensorView::contiguous(inputs[static_cast<size_t>(i)].data(), {1, 4}, DType::kF32);
      request.mutable_run_graph()->set_graph_hash(remote.id());
      request.mutable_run_graph()->set_seq(1);
      id = client->send(request, std::span(&io, 1));
    }
    ASSERT_TRUE(id.ok()) << id.status().to_string();
    ids.push_back(*id);
  }
  EXPECT_EQ(std::set<uint64_t>(ids.begin(), ids.end()).size(), ids.size());
  for (int i = kInFlight - 1; i >= 0; --i) {
    Result<ReplyMessage> reply = client->receive(ids[static_cast<size_t>(i)]);
    ASSERT_TRUE(reply.ok()) << "request " << i << ": " << reply.status().to_string();
    EXPECT_EQ(reply->reply.correlation_id(), ids[static_cast<size_t>(i)]);
    if (i % 2 == 0) {
      ASSERT_EQ(reply->reply.body_case(), rpc::Reply::kStats);
      EXPECT_FALSE(json::parse(reply->reply.stats().json(), nullptr, false).is_discarded());
    } else {
      ASSERT_EQ(reply->reply.body_case(), rpc::Reply::kRunGraph);
      EXPECT_EQ(reply->reply.run_graph().graph_hash(), remote.id());
      std::vector<HostTensor> out;
      for (const TensorView& t : reply->tensors) out.push_back(HostTensor::copy_of(t));
      EXPECT_TRUE(is_sum(out, inputs[static_cast<size_t>(i)], b)) << "request " << i;
    }
  }
  const json counters = stats_of(*client)["counters"];
  EXPECT_EQ(total_errors(stats_of(*client)), 0u);
  EXPECT_EQ(counters["graphs_uploaded"], 1);
}

// More requests in flight than the scheduler reads in one pass (1024) and than the
// ROUTER's queue to one client holds (1000): the rest wait in ZeroMQ (backpressure), the
// replies past that queue are held and retried (Note [Held replies]), and every request
// is still answered, none dropped, though the client reads nothing until it has sent
// them all (its receive queue must not refuse replies).
TEST(Rpc, ThousandsInFlightAreAllAnsweredNoneDropped) {
  LoopbackServer server;
  auto client = server.connect();
  const Graph graph = add_graph();
  const float b[4] = {1, 2, 3, 4};
  RemoteGraph remote(*client, graph, {TensorView::contiguous(const_cast<float*>(b), {4}, DType::kF32)});
  ASSERT_TRUE(first_run(remote).ok());
  constexpr int kInFlight = 3000;
  std::vector<float> input = {0.25f, -1.0f, 8.0f, 3.0f};
  const TensorView io = TensorView::contiguous(input.data(), {1, 4}, DType::kF32);
  std::vector<uint64_t> ids;
  for (int i = 0; i < kInFlight; ++i) {
    rpc::Request request;
    request.mutable_run_graph()->set_graph_hash(remote.id());
    request.mutable_run_graph()->set_seq(1);
    Result<uint64_t> id = client->send(request, std::span(&io, 1));
    ASSERT_TRUE(id.ok()) << id.status().to_string();
    ids.push_back(*id);
  }
  for (uint64_t id : ids) {
    Result<ReplyMessage> reply = client->receive(id);
    ASSERT_TRUE(reply.ok()) << reply.status().to_string();
    ASSERT_EQ(reply->reply.body_case(), rpc::Reply::kRunGraph);
    std::vector<HostTensor> out;
    for (const TensorView& t : reply->tensors) out.push_back(HostTensor::copy_of(t));
    ASSERT_TRUE(is_sum(out, input, b));
  }
  const json stats = stats_of(*client);
  EXPECT_EQ(total_errors(stats), 0u);
  EXPECT_EQ(stats["counters"]["replies_dropped"], 0);
}

// 9. Remote generation is native generation: same tokens, same logits bit for bit.
TEST(Rpc, RemoteGenerationEqualsNative) {
  const std::string source = DJINN_GOLDEN_DIR "/llama-tiny";
  const std::vector<int32_t> prompt = {1, 15, 27, 3, 99, 42, 7};
  constexpr int64_t kNewTokens = 12;

  RuntimeOptions native_options;
  native_options.device_mem_gb = 0.25;
  std::unique_ptr<Runtime> native = *Runtime::create(native_options);
  const ModelId native_model = *native->load_model(source);
  const SessionId native_session = *native->open_session(native_model, 64);
  const GenerateResult want = *native->generate(native_session, prompt, kNewTokens);
  ASSERT_EQ(want.new_tokens.size(), static_cast<size_t>(kNewTokens));
  const SessionId native_full = *native->open_session(native_model, 64);
  const ForwardResult want_logits = *native->forward(native_full, prompt, /*all_logits=*/true);

  LoopbackServer server;
  auto client = server.connect();
  Result<rpc::LoadModelReply> loaded = client->load_model(source);
  ASSERT_TRUE(loaded.ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->family(), "llama");
  RemoteSession session = *client->open_session(loaded->model_id(), 64);
  Result<RemoteGenerateResult> got = session.generate(prompt, kNewTokens);
  ASSERT_TRUE(got.ok()) << got.status().to_string();
  EXPECT_EQ(got->tokens, want.new_tokens);

  RemoteSession full = *client->open_session(loaded->model_id(), 64);
  Result<RemoteForwardResult> logits = full.forward(prompt, /*all_logits=*/true);
  ASSERT_TRUE(logits.ok()) << logits.status().to_string();
  EXPECT_EQ(logits->rows, static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(logits->next_token, want_logits.next_token);
  ASSERT_EQ(logits->logits.size(), want_logits.logits.size());
  EXPECT_EQ(std::memcmp(logits->logits.data(), want_logits.logits.data(), want_logits.logits.size() * sizeof(float)), 0);
}

// 10. Graphs whose attributes make the shape checks' own arithmetic overflow, and a
// RunGraph `past` that overflows the kernels' bounds checks: the server must refuse
// them and go on serving. Each runs in a child process, so a crash fails only its case.
// `statement` returns what went wrong ("" for nothing); the child prints it on stderr,
// where the parent shows it.
#define EXPECT_NO_CRASH(statement)                        \
  EXPECT_EXIT(                                            \
      {                                                   \
        const std::string problems = (statement);         \
        std::fputs(problems.c_str(), stderr);             \
        std::fflush(stderr);                              \
        std::_Exit(problems.empty() ? 0 : 1);             \
      },                                                  \
      ::testing::ExitedWithCode(0), "")

// Uploads `def` with `tensors` (resident, then io) and runs it at `symbols`: the reply
// must be an error naming the problem (not an internal one), and the server must still
// answer, with nothing left on the stack.
std::string refused_and_still_serving(const rpc::GraphDef& def, const std::vector<TensorView>& tensors,
                                      SymbolBindings symbols) {
  std::string problems;
  LoopbackServer server;
  auto client = server.connect();
  rpc::Request request;
  *request.mutable_run_graph()->mutable_graph() = def;
  request.mutable_run_graph()->set_seq(symbols.seq);
  request.mutable_run_graph()->set_past(symbols.past);
  Result<ReplyMessage> reply = client->call(request, tensors);
  if (reply.ok()) problems += "the server ran the graph and replied with success\n";
  else if (reply.status().code() == StatusCode::kInternal) problems += "internal error: " + reply.status().message() + "\n";
  const json stats = stats_of(*client);
  if (stats["vmu"]["stack"]["used"] != 0) problems += "stack not empty: " + stats["vmu"]["stack"].dump() + "\n";
  return problems;
}

TEST(RpcDeathTest, HostileGraphsAreRefusedWithoutCrashing) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  std::vector<float> buffer(64, 1.0f);
  auto view = [&](size_t offset, Shape shape) { return TensorView::contiguous(buffer.data() + offset, std::move(shape), DType::kF32); };
  rpc::GraphDef slice;
  {
    Graph g(Phase::kPrefill);
    const ValueId x = g.add_io_input("x", DType::kF32, {1, 4});
    g.mark_output(g.add_node(OpKind::kSlice, {x}, OpAttrs{.start = 0, .length = 4}));
    rpc::graph_to_proto(g, slice);
    slice.mutable_nodes(0)->mutable_attrs()->set_start(INT64_MAX - 2);  // start + 4 wraps: reads before x
  }
  rpc::GraphDef attention;
  {
    Graph g(Phase::kDecode);
    const ValueId q = g.add_io_input("q", DType::kF32, {1, 8});
    const ValueId k = g.add_kv("k", DType::kF32, {4, 8});
    const ValueId v = g.add_kv("v", DType::kF32, {4, 8});
    const ValueId pos = g.add_io_input("pos", DType::kI32, {1});
    g.mark_output(g.add_node(OpKind::kAttention, {q, k, v, pos}, OpAttrs{.n_heads = 2, .n_kv_heads = 2, .head_dim = 4, .scale = 0.5f}));
    rpc::graph_to_proto(g, attention);
  }
  rpc::GraphDef heads = attention;
  heads.mutable_nodes(0)->mutable_attrs()->set_n_heads((int64_t{1} << 62) + 2);  // x 4 heads wraps to 8 columns
  rpc::GraphDef append;
  {
    Graph g(Phase::kDecode);
    const ValueId cache = g.add_kv("cache", DType::kF32, {4, 4});
    const ValueId fresh = g.add_io_input("new", DType::kF32, {1, 4});
    const ValueId pos = g.add_io_input("pos", DType::kI32, {1});
    g.mark_output(g.add_node(OpKind::kKvAppend, {cache, fresh, pos}));
    rpc::graph_to_proto(g, append);
  }
  // Positions are data: the largest a client can send is INT32_MAX (and negative ones).
  static int32_t pos_huge[1] = {INT32_MAX}, pos_negative[1] = {-5}, pos_two[1] = {2}, pos_three[1] = {3};
  auto pos = [](int32_t* p) { return TensorView::contiguous(p, {1}, DType::kI32, LifetimeClass::kIo); };
  const std::vector<TensorView> attention_inputs = {view(8, {4, 8}), view(8, {4, 8}), view(0, {1, 8}), pos(pos_two)};
  std::vector<TensorView> attention_huge = attention_inputs;
  attention_huge[3] = pos(pos_huge);
  std::vector<TensorView> attention_negative = attention_inputs;
  attention_negative[3] = pos(pos_negative);
  EXPECT_NO_CRASH(refused_and_still_serving(slice, {view(0, {1, 4})}, {.seq = 1, .past = 0}));
  EXPECT_NO_CRASH(refused_and_still_serving(heads, attention_inputs, {.seq = 1, .past = 0}));
  EXPECT_NO_CRASH(refused_and_still_serving(append, {view(0, {4, 4}), view(16, {1, 4}), pos(pos_huge)}, {.seq = 1, .past = 0}));
  EXPECT_NO_CRASH(refused_and_still_serving(append, {view(0, {4, 4}), view(16, {1, 4}), pos(pos_negative)}, {.seq = 1, .past = 0}));
  EXPECT_NO_CRASH(refused_and_still_serving(attention, attention_huge, {.seq = 1, .past = 0}));
  EXPECT_NO_CRASH(refused_and_still_serving(attention, attention_negative, {.seq = 1, .past = 0}));
  // Sanity: the same graphs with sane attributes run.
  LoopbackServer server;
  auto client = server.connect();
  rpc::Request request;
  *request.mutable_run_graph()->mutable_graph() = append;
  request.mutable_run_graph()->set_seq(1);
  request.mutable_run_graph()->set_past(3);
  const std::vector<TensorView> append_inputs = {view(0, {4, 4}), view(16, {1, 4}), pos(pos_three)};
  Result<ReplyMessage> reply = client->call(request, append_inputs);
  EXPECT_TRUE(reply.ok()) << reply.status().to_string();
  *request.mutable_run_graph()->mutable_graph() = attention;
  request.mutable_run_graph()->set_past(2);
  reply = client->call(request, attention_inputs);
  EXPECT_TRUE(reply.ok()) << reply.status().to_string();
}

}  // namespace
}  // namespace djinn
