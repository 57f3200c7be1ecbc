// The C++ client library: Client (one connection, a ZeroMQ DEALER socket) and the
// handles it gives out — RemoteSession (a session living on the server) and
// RemoteGraph (a small op graph the server keeps after its first run).
//
// Requests carry a correlation id; send() / receive() let a caller keep many in
// flight on one Client, and the blocking helpers are send + receive. An error reply
// becomes a Status carrying the server's code and message.
// Threads: a Client and its handles are used by one thread at a time; use one Client
// per thread for concurrency.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "djinn/core/status.h"
#include "djinn/core/tensor.h"
#include "djinn/graph/graph.h"
#include "djinn/rpc/djinn.pb.h"

namespace djinn {

struct ClientOptions {
  std::string name = "djinn-client";
  double timeout_s = 120;  // a reply slower than this is an error
  // Busy-poll for a reply this long (microseconds, yielding the core between looks)
  // before sleeping in zmq_poll: saves the wake-up of the client thread when replies
  // are quick, for at most that long of the calling thread's core per reply (see
  // ServerOptions::busy_poll_us for what it saves). Longer than the server's: it must
  // outlast the server's work on the request (a 1x1 add on a GPU: ~40 µs, a ~90-µs
  // round trip). 2-core EPYC, tcp, alternated: micro_add 32-40 µs above native at 250
  // against 45-56 at 50. 0: never.
  int busy_poll_us = 250;
  // Pin the client's ZeroMQ I/O thread to this CPU (-1: no pinning); with the calling
  // thread on the same CPU their hand-off is a switch on one core, not a wake-up of
  // another (see ServerOptions::pin_cpu).
  int io_cpu = -1;
};

// A reply and its tensor frames (views stay valid as long as the ReplyMessage).
struct ReplyMessage {
  rpc::Reply reply;
  std::vector<zmq::message_t> frames;
  std::vector<TensorView> tensors;
  std::vector<HostTensor> realigned;  // see rpc::decode_tensors
};

struct RemoteForwardResult {
  int32_t next_token = -1;
  int64_t rows = 0;
  std::vector<float> logits;  // [rows, vocab]
  rpc::StepTiming timing;
};

struct RemoteGenerateResult {
  std::vector<int32_t> tokens;
  double prefill_ms = 0;
  std::vector<double> decode_step_ms;
  double server_us = 0;
};

class Client;

class RemoteSession {
 public:
  RemoteSession(Client& client, uint64_t id, std::string token, int64_t capacity)
      : client_(&client), id_(id), token_(std::move(token)), capacity_(capacity) {}

  uint64_t id() const { return id_; }
  const std::string& token() const { return token_; }
  int64_t capacity() const { return capacity_; }

  Result<RemoteForwardResult> forward(std::span<const int32_t> tokens, bool all_logits = false);
  Result<RemoteGenerateResult> generate(std::span<const int32_t> prompt, int64_t max_new_tokens);
  // IO_WAIT before a tool call (with the expected resume time, 0 if unknown), COMPUTE after.
  Status signal(rpc::SignalPhase::Phase phase, double estimated_resume_ms = 0);
  Result<double> heartbeat();  // renews the lease; returns the seconds left
  Status close();

 private:
  void fill(rpc::Request& request) const;
  Client* client_;
  uint64_t id_;
  std::string token_;
  int64_t capacity_;
};

class RemoteGraph {
 public:
  // `resident`: the graph's weight and kv inputs in graph-input order; they travel
  // once, with the graph, and stay on the server.
  RemoteGraph(Client& client, const Graph& graph, std::vector<TensorView> resident);

  // Runs with `io` (the graph's io inputs in order). The first run uploads.
  Result<std::vector<HostTensor>> run(std::span<const TensorView> io, const SymbolBindings& symbols,
                                      rpc::StepTiming* timing = nullptr);
  bool uploaded() const { return id_ != 0; }
  uint64_t id() const { return id_; }

 private:
  Client* client_;
  rpc::GraphDef def_;
  std::vector<TensorView> resident_;
  uint64_t id_ = 0;
};

class Client {
 public:
  // Connects and says Hello; a server speaking another protocol version is refused.
  static Result<std::unique_ptr<Client>> connect(const std::string& address, const ClientOptions& options = {});
  ~Client();

  // Sends `request` (its correlation id is set here) with tensor frames.
  Result<uint64_t> send(rpc::Request& request, std::span<const TensorView> tensors = {});
  // Waits for the reply to `correlation_id`; replies to other ids are kept for later.
  Result<ReplyMessage> receive(uint64_t correlation_id);
  Result<ReplyMessage> call(rpc::Request& request, std::span<const TensorView> tensors = {});

  Result<rpc::LoadModelReply> load_model(const std::string& source, const std::string& dtype = "f32", uint64_t seed = 0);
  Result<RemoteSession> open_session(uint64_t model_id, int64_t max_context = 0);
  // A handle on a session opened elsewhere (e.g. by an earlier `djinn client` call).
  RemoteSession attach(uint64_t session_id, std::string token) { return RemoteSession(*this, session_id, std::move(token), 0); }
  Result<nlohmann::json> stats();
  const std::string& address() const { return address_; }

 private:
  Client(std::string address, const ClientOptions& options);

  std::string address_;
  ClientOptions options_;
  zmq::context_t context_;
  zmq::socket_t socket_;
  uint64_t next_correlation_id_ = 1;
  std::map<uint64_t, ReplyMessage> early_;  // replies that arrived before they were asked for
};

}  // namespace djinn
