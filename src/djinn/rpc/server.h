// Server: `djinn serve`. A ZeroMQ ROUTER socket (one or more tcp:// / ipc:// /
// inproc:// endpoints) in front of one Runtime.
//
// Threads (Note [Server threads] in server.cc):
//   ZeroMQ's I/O thread  the RPC front end: reads and writes the sockets and queues
//                        whole requests (identity + frames) on the ROUTER.
//   scheduler thread     the caller of serve(), one per device: owns the ROUTER socket,
//                        the Runtime (and so the compute stream), the sessions, the swap
//                        policy and every counter; decodes, validates and executes
//                        requests, runs batched decode, sends the replies.
// With --pin-cpu both share one CPU. stop() may be called from any thread or a signal
// handler.
//
// Sessions are private: OpenSession returns a random 128-bit token that every later
// call on the session must carry; a wrong or missing token is refused and counted.
// Every call on a session renews its lease (--session-lease-s; an IO_WAIT signal with
// an estimated resume time extends it past that time); a session whose lease runs out
// is closed and its arena returns to the Data segment.
//
// Bad input never takes the server down: every malformed request gets an error reply
// naming the problem and is counted in Stats; nothing it allocated outlives it.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>
#include <zmq.hpp>

#include "djinn/rpc/djinn.pb.h"
#include "djinn/rpc/wire.h"
#include "djinn/runtime/runtime.h"
#include "djinn/sched/swap_policy.h"

namespace djinn::rpc {

struct ServerOptions {
  std::vector<std::string> listen = {"tcp://127.0.0.1:5556"};
  RuntimeOptions runtime;
  std::string policy = "proactive";  // proactive | reactive | none | lru (sched/swap_policy.h)
  double idle_timeout_s = 30;        // reactive policy
  double session_lease_s = 300;      // a session not heard from for this long is closed
  double max_request_mb = 256;       // larger requests are refused
  // Busy-poll the socket this long (microseconds, yielding between looks) before
  // sleeping in zmq_poll: a request arriving meanwhile costs no wake-up of the server
  // thread. Only while no generation runs (then the loop does not sleep anyway): idle,
  // it costs 50 µs of every kPollMs (5 ms) of the request path's core, 1 %. Measured on
  // the 2-core EPYC, server and client at 50 µs against 0, alternated: micro_add over
  // ipc 42-43 µs above native against 69-72, over tcp 31-48 against 75-92. 0: never.
  int busy_poll_us = 50;
  // Pin the request path — ZeroMQ's I/O thread and the scheduler thread —
  // to this CPU (-1: no pinning). Their hand-offs then are context switches on one core
  // instead of cross-core wake-ups, which on a virtual machine cost an inter-processor
  // interrupt each. Bulk work still spreads over every CPU (OpenBLAS's threads,
  // core/parallel.h).
  int pin_cpu = -1;
  // OpenSession without a free arena waits this long for one (sessions closing, leases
  // expiring, the policy swapping idle sessions out), then fails with out-of-memory.
  // 0: fail at once.
  double admission_timeout_s = 0;
};

// Why requests failed; every one is counted in Stats under "errors".
struct ServerCounters {
  uint64_t requests = 0;
  uint64_t replies = 0;
  std::map<std::string, uint64_t> requests_by_type;
  std::map<std::string, uint64_t> errors;  // malformed, bad_token, unknown_session, too_large, ...
  uint64_t sessions_opened = 0;
  uint64_t sessions_closed = 0;
  uint64_t leases_expired = 0;
  uint64_t phase_signals = 0;
  uint64_t graphs_uploaded = 0;
  uint64_t policy_swaps_out = 0;
  uint64_t policy_swaps_in = 0;
  uint64_t swap_refusals = 0;
  uint64_t lru_evictions = 0;
  uint64_t decode_steps = 0;          // batched decode steps run
  uint64_t decode_step_sessions = 0;  // sessions over all of them (/ decode_steps = mean batch)
  uint64_t max_decode_batch = 0;
  uint64_t admissions_waited = 0;  // OpenSessions admitted after waiting for an arena
};

class Server {
 public:
  static Result<std::unique_ptr<Server>> create(const ServerOptions& options);
  ~Server();

  // Serves until stop(), then drains: answers what is in flight and closes every
  // session. The calling thread is the scheduler thread.
  Status serve();
  void stop() { stop_requested_.store(true, std::memory_order_relaxed); }
  // The endpoints bound, wildcards resolved (tcp://127.0.0.1:* -> tcp://127.0.0.1:40123).
  const std::vector<std::string>& endpoints() const { return endpoints_; }
  // One line: address, device, VMU sizes, policy.
  std::string describe() const;

 private:
  enum class SessionPhase : uint8_t { kCompute, kIoWait };
  struct SessionRecord {
    std::string token;
    ModelId model = 0;
    std::chrono::steady_clock::time_point lease_deadline;
    SessionPhase phase = SessionPhase::kCompute;
    double estimated_resume_ms = 0;
  };
  struct StoredGraph {
    Graph graph{Phase::kPrefill};
    std::vector<HostTensor> resident;   // weight and kv inputs, in input order
    std::vector<bool> input_is_io;      // per graph input
  };
  struct Outgoing {
    Reply reply;
    std::vector<zmq::message_t> tensors;
    bool deferred = false;  // the reply is sent later (a Generate still decoding)
  };
  // A Generate between its prefill and its last token: its decode steps join the
  // batched decode step of every such session (continuous batching).
  struct ActiveGeneration {
    zmq::message_t identity;
    uint64_t correlation_id = 0;
    SessionId session = 0;
    int64_t remaining = 0;  // decode steps still to run
    std::vector<int32_t> tokens;
    double prefill_ms = 0;
    std::vector<double> step_ms;
    double queue_us = 0, swap_in_us = 0, compute_us = 0;
    std::chrono::steady_clock::time_point received;
    std::chrono::steady_clock::time_point last_step_end;
  };
  using Clock = std::chrono::steady_clock;

  Server(const ServerOptions& options, std::unique_ptr<Runtime> runtime);
  // The scheduler thread's loop: requests from the ROUTER, decode steps, leases, swaps,
  // admissions; drains after stop().
  Status schedule();
  // Note [Held replies] (server.cc): replies waiting for a full client queue to drain.
  struct HeldReply {
    std::vector<zmq::message_t> parts;  // identity, header, tensor frames
    std::chrono::steady_clock::time_point since;
  };
  std::deque<HeldReply> held_replies_;
  void send_held_replies();
  void handle(zmq::message_t& identity, std::vector<zmq::message_t>& frames);
  Status dispatch(const DecodedRequest& request, Outgoing& out);
  Result<SessionRecord*> authorize(const Request& request);
  void expire_leases();
  double now_s() const { return std::chrono::duration<double>(Clock::now() - started_).count(); }
  // Finishes swap copies that are done and tells the policy; then carries out what the
  // policy decides now.
  void run_swap_policy();
  void note_step(SessionId id);
  void sync_policy(SessionId id);
  // Turns `reply` into an error reply (keeping its correlation id).
  static void set_error(Reply& reply, const Status& status);
  void begin_compute(SessionId id, SessionRecord& record);
  // One batched decode step for every active generation (grouped by model and
  // capacity); finished generations get their replies.
  void run_decode_step();
  void finish_generation(ActiveGeneration& generation, const Status& status);
  void cancel_generation(SessionId session, const std::string& why);
  struct PendingAdmission {
    zmq::message_t identity;
    uint64_t correlation_id = 0;
    OpenSession open;
    double deadline_s = 0;
    Status last_error;
  };
  Result<SessionId> try_admit(const OpenSession& open);
  Status complete_admission(SessionId id, const OpenSession& open, Outgoing& out);
  void run_admissions();
  void renew(SessionRecord& record);
  void count_error(const std::string& kind);
  void send(zmq::message_t& identity, Outgoing& out);
  nlohmann::json stats_json() const;

  Status on_hello(const Hello& hello, Outgoing& out);
  Status on_load_model(const LoadModel& load, Outgoing& out);
  Status on_open_session(const OpenSession& open, Outgoing& out);
  Status on_close_session(const Request& request, Outgoing& out);
  Status on_forward(const Request& request, Outgoing& out);
  Status on_generate(const Request& request, Outgoing& out);
  Status on_run_graph(const DecodedRequest& request, Outgoing& out);
  Status on_signal_phase(const Request& request, Outgoing& out);
  Status on_heartbeat(const Request& request, Outgoing& out);

  ServerOptions options_;
  std::unique_ptr<Runtime> runtime_;
  zmq::context_t context_;
  zmq::socket_t router_;  // scheduler thread
  uint64_t replies_dropped_ = 0;  // replies a ROUTER refused (the client was gone); scheduler thread
  std::vector<std::string> endpoints_;
  std::atomic<bool> stop_requested_{false};
  std::map<SessionId, SessionRecord> sessions_;
  std::unordered_map<uint64_t, StoredGraph> graphs_;
  SwapPolicy policy_;
  struct PendingSwap {
    bool out;
    double started_s;
    size_t bytes;
  };
  std::map<SessionId, PendingSwap> pending_swaps_;
  std::map<SessionId, ActiveGeneration> generating_;
  std::deque<PendingAdmission> admissions_;
  zmq::message_t* current_identity_ = nullptr;  // the request being handled
  // Latency decomposition of finished generations (last 4096), microseconds.
  std::deque<double> queue_samples_, swap_in_samples_, compute_samples_;
  ServerCounters counters_;
  uint64_t errors_total_ = 0;
  Clock::time_point started_ = Clock::now();
  Clock::time_point request_started_;
};

}  // namespace djinn::rpc
