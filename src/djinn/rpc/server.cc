#include "djinn/rpc/server.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <pthread.h>
#include <sched.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <thread>
#include <utility>
#include <cerrno>
#include <cstring>

#include "djinn/core/cpu_affinity.h"
#include "djinn/rpc/graph_codec.h"

namespace djinn::rpc {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;
constexpr auto kReplyHoldLimit = std::chrono::seconds(30);  // Note [Held replies]
constexpr int kPollMs = 5;         // how often the loop looks at leases, swap timers and the stop flag
constexpr size_t kMaxGraphs = 1024;  // graphs kept for RunGraph-by-hash
constexpr int kRequestsPerPass = 1024;  // requests read from the ROUTER before the loop looks at decode and timers

double us_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
}

const char* body_name(Request::BodyCase body) {
  switch (body) {
    case Request::kHello: return "hello";
    case Request::kLoadModel: return "load_model";
    case Request::kOpenSession: return "open_session";
    case Request::kCloseSession: return "close_session";
    case Request::kForward: return "forward";
    case Request::kGenerate: return "generate";
    case Request::kRunGraph: return "run_graph";
    case Request::kSignalPhase: return "signal_phase";
    case Request::kHeartbeat: return "heartbeat";
    case Request::kStats: return "stats";
    case Request::BODY_NOT_SET: return "unknown";
  }
  return "unknown";
}

uint64_t fnv1a(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

zmq::message_t tensor_frame(const HostTensor& t) { return zmq::message_t(t.bytes.data(), t.bytes.size()); }

// 128 bits from the kernel's CSPRNG, as hex: a session token nobody can predict from
// the tokens they were given.
Result<std::string> random_token() {
  uint64_t words[2];
  size_t filled = 0;
  while (filled < sizeof words) {
    const ssize_t n = ::getrandom(reinterpret_cast<char*>(words) + filled, sizeof words - filled, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return internal_error(fmt::format("getrandom: {}", std::strerror(errno)));
    }
    filled += static_cast<size_t>(n);
  }
  return fmt::format("{:016x}{:016x}", words[0], words[1]);
}

// One I/O thread, on `pin_cpu` when that is >= 0 (set before any socket starts it).
zmq::context_t make_context(int pin_cpu) {
  zmq::context_t context(1);
  if (pin_cpu >= 0) context.set(zmq::ctxopt::thread_affinity_cpu_add, pin_cpu);
  return context;
}

}  // namespace

Result<std::unique_ptr<Server>> Server::create(const ServerOptions& options) {
  if (options.listen.empty()) return invalid_argument("serve: no --listen address");
  if (!(options.session_lease_s > 0)) return invalid_argument("--session-lease-s must be > 0");
  if (!(options.max_request_mb > 0)) return invalid_argument("--max-request-mb must be > 0");
  DJINN_RETURN_IF_ERROR(parse_swap_policy(options.policy));
  if (options.pin_cpu < -1 || (options.pin_cpu >= 0 && !is_startup_cpu(options.pin_cpu)))
    return invalid_argument(fmt::format("--pin-cpu {} is not one of the CPUs this process may use", options.pin_cpu));
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<Runtime> runtime, Runtime::create(options.runtime));
  std::unique_ptr<Server> server(new Server(options, std::move(runtime)));
  for (const std::string& address : options.listen) {
    try {
      server->router_.bind(address);
      server->endpoints_.push_back(server->router_.get(zmq::sockopt::last_endpoint));
    } catch (const zmq::error_t& e) {
      return invalid_argument(fmt::format("cannot listen on '{}': {}", address, e.what()));
    }
  }
  return server;
}

Server::Server(const ServerOptions& options, std::unique_ptr<Runtime> runtime)
    : options_(options),
      runtime_(std::move(runtime)),
      context_(make_context(options.pin_cpu)),
      router_(context_, zmq::socket_type::router),
      policy_(*parse_swap_policy(options.policy), options.idle_timeout_s) {
  router_.set(zmq::sockopt::linger, 0);
  // A reply to a client that is gone fails, and is counted, instead of vanishing; one
  // to a client whose queue is full fails too, and waits (Note [Held replies]).
  router_.set(zmq::sockopt::router_mandatory, true);
  // Frames larger than the request limit (+ room for the header) are dropped by ZeroMQ
  // before they are buffered in full.
  router_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(options.max_request_mb * kMiB) + (int64_t{1} << 20));
}

Server::~Server() {
  sessions_.clear();
  router_.close();
}

std::string Server::describe() const {
  const nlohmann::json vmu = runtime_->vmu().stats_json();
  return fmt::format(
      "djinn serve: listening on {} | device {} | VMU {} (host swap pool {}) | arena {} | policy {} | lease {} s | "
      "request path on {} | busy-poll {} us",
      fmt::join(endpoints_, ", "), device_name(runtime_->backend().device()), format_bytes(vmu["capacity"].get<size_t>()),
      format_bytes(vmu["host_pool"]["capacity"].get<size_t>()),
      runtime_->vmu().data().arena_bytes() ? format_bytes(runtime_->vmu().data().arena_bytes()) : "per model",
      options_.policy, options_.session_lease_s,
      options_.pin_cpu >= 0 ? fmt::format("CPU {}", options_.pin_cpu) : std::string("any CPU"), options_.busy_poll_us);
}

// Note [Server threads]
// ~~~~~~~~~~~~~~~~~~~~~
// A warm request takes these hops (each one a wake-up unless the woken thread is
// busy-polling): client thread -> client's ZeroMQ I/O thread -> socket -> server's
// ZeroMQ I/O thread -> scheduler thread, which decodes, executes and sends the reply ->
// I/O threads -> client thread: the hops of a bare DEALER -> ROUTER echo, which
// `bench os-tax` measures beside it. ZeroMQ's I/O thread is the RPC front end: it reads
// and writes the sockets, frames messages and queues whole requests on the ROUTER for
// the scheduler thread, which owns the ROUTER and everything with state (no lock guards
// sessions, graphs or counters). An RPC thread of our own between the two, relaying
// messages over an inproc pipe, cost two more wake-ups and ~45 system calls per request:
// on the 2-core EPYC, binaries with and without it alternated, micro_add's overhead was
// 86-93 us with it and 71-77 us without (a bare ZeroMQ echo: 69-74 us), 1.79-1.95x the
// plain-TCP floor against 1.38-1.67x. With --pin-cpu the I/O thread and the scheduler
// share one core; a warm request then pays cross-core wake-ups only between client and
// server, as the plain-socket floor does. Busy-polling (ServerOptions::busy_poll_us,
// 50 µs by default, and ClientOptions::busy_poll_us, 250 µs) takes the scheduler's and the client's
// wake-ups off that path when replies and requests come quickly.
//
// Backpressure: the scheduler reads at most kRequestsPerPass requests between two looks
// at decode steps and timers; the rest wait in ZeroMQ's queues (bounded by the ROUTER's
// high-water mark and --max-request-mb), not in this process's memory.
namespace {

enum class SendOutcome { kSent, kPeerFull, kPeerGone };
// Sends a whole reply [identity, frames...] through the ROUTER without waiting. With
// ROUTER_MANDATORY a full queue to the peer refuses the first part (EAGAIN, nothing
// queued, the parts are left intact for a retry) and an unknown peer fails
// (EHOSTUNREACH); past the first part a message is never refused (the high-water mark
// counts whole messages).
SendOutcome send_reply(zmq::socket_t& router, std::vector<zmq::message_t>& parts) {
  for (size_t i = 0; i < parts.size(); ++i) {
    const auto flags = i + 1 < parts.size() ? zmq::send_flags::sndmore | zmq::send_flags::dontwait
                                            : zmq::send_flags::dontwait;
    try {
      if (!router.send(parts[i], flags)) return i == 0 ? SendOutcome::kPeerFull : SendOutcome::kPeerGone;
    } catch (const zmq::error_t&) {
      return SendOutcome::kPeerGone;
    }
  }
  return SendOutcome::kSent;
}

}  // namespace

Status Server::serve() {
  const ScopedCpuPin pin(options_.pin_cpu);  // the scheduler thread, until serve() returns
  Status status;
  try {
    status = schedule();
  } catch (const std::exception& e) {  // never std::terminate: report it, after the drain below
    status = internal_error(fmt::format("scheduler thread: {}", e.what()));
  }
  try {
    // The last replies still waiting for their clients to read get a moment more.
    const auto deadline = Clock::now() + std::chrono::seconds(1);
    while (!held_replies_.empty() && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      send_held_replies();
    }
  } catch (const zmq::error_t&) {
  }
  replies_dropped_ += held_replies_.size();
  held_replies_.clear();
  return status;
}

// Note [Held replies]: a client that sends many requests before reading fills its
// queue on the ROUTER (1000 messages); a reply that finds it full waits here instead of
// being dropped, and goes out once the client reads. Replies to one client keep their
// order (one that waits holds back its later ones); other clients' replies pass. A
// reply that waited kReplyHoldLimit (the client stopped reading) or whose client is
// gone is dropped and counted (replies_dropped). Scheduler thread only.
void Server::send_held_replies() {
  std::vector<std::string> stalled;  // peers whose queue was full in this pass
  const auto now = Clock::now();
  for (auto it = held_replies_.begin(); it != held_replies_.end();) {
    const std::string peer(static_cast<const char*>(it->parts.front().data()), it->parts.front().size());
    if (std::find(stalled.begin(), stalled.end(), peer) != stalled.end()) {
      ++it;
      continue;
    }
    const SendOutcome outcome = send_reply(router_, it->parts);
    if (outcome == SendOutcome::kPeerFull && now - it->since < kReplyHoldLimit) {
      stalled.push_back(peer);
      ++it;
      continue;
    }
    if (outcome != SendOutcome::kSent) ++replies_dropped_;
    it = held_replies_.erase(it);
  }
}

Status Server::schedule() {
  zmq::pollitem_t items[] = {{router_.handle(), 0, ZMQ_POLLIN, 0}};
  std::vector<zmq::message_t> frames;
  Status status;
  while (!stop_requested_.load(std::memory_order_relaxed)) {
    if (options_.busy_poll_us > 0 && generating_.empty()) {  // see ServerOptions::busy_poll_us
      const auto spin_start = Clock::now();
      while (Clock::now() - spin_start < std::chrono::microseconds(options_.busy_poll_us)) {
        if (router_.get(zmq::sockopt::events) & ZMQ_POLLIN) break;
        sched_yield();
      }
    }
    // Decode steps to run: look and go on. Held replies (Note [Held replies]) are
    // retried every millisecond.
    const int timeout_ms = !generating_.empty() ? 0 : held_replies_.empty() ? kPollMs : 1;
    try {
      zmq::poll(items, 1, std::chrono::milliseconds(timeout_ms));
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      status = internal_error(fmt::format("poll: {}", e.what()));
      break;  // still drains below: every waiting client gets its reply
    }
    if (!held_replies_.empty()) send_held_replies();
    // Requests (identity, then the client's frames), at most kRequestsPerPass before
    // the decode step and the timers get their turn.
    for (int read = 0; (items[0].revents & ZMQ_POLLIN) && read < kRequestsPerPass; ++read) {
      zmq::message_t identity;
      if (!router_.recv(identity, zmq::recv_flags::dontwait)) break;
      frames.clear();
      while (identity.more() && (frames.empty() || frames.back().more())) {
        zmq::message_t frame;
        (void)router_.recv(frame);  // the rest of a multipart message is already here
        frames.push_back(std::move(frame));
      }
      handle(identity, frames);
    }
    run_decode_step();
    expire_leases();
    run_swap_policy();
    run_admissions();
  }
  const size_t open = sessions_.size();
  while (!generating_.empty()) cancel_generation(generating_.begin()->first, "the server is shutting down");
  for (PendingAdmission& waiting : admissions_) {
    Outgoing out;
    out.reply.set_correlation_id(waiting.correlation_id);
    set_error(out.reply, unavailable("the server is shutting down"));
    send(waiting.identity, out);
  }
  admissions_.clear();
  for (auto& [id, record] : sessions_) (void)runtime_->close_session(id);
  sessions_.clear();
  spdlog::info("djinn serve: drained, closed {} open sessions", open);
  return status;
}

void Server::count_error(const std::string& kind) {
  ++counters_.errors[kind];
  ++errors_total_;
}

void Server::renew(SessionRecord& record) {
  const double extra_ms = record.phase == SessionPhase::kIoWait ? record.estimated_resume_ms : 0.0;
  record.lease_deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                             std::chrono::duration<double>(options_.session_lease_s + extra_ms / 1e3));
}

void Server::expire_leases() {
  const auto now = Clock::now();
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    if (it->second.lease_deadline < now) {
      cancel_generation(it->first, "its lease expired");
      (void)runtime_->close_session(it->first);
      policy_.session_closed(it->first);
      pending_swaps_.erase(it->first);
      ++counters_.leases_expired;
      ++counters_.sessions_closed;
      spdlog::info("session {}: lease expired, closed", it->first);
      it = sessions_.erase(it);
    } else {
      ++it;
    }
  }
}

void Server::set_error(Reply& reply, const Status& status) {
  const uint64_t correlation = reply.correlation_id();
  reply.Clear();
  reply.set_correlation_id(correlation);
  reply.mutable_error()->set_code(status_code_wire_name(status.code()));
  reply.mutable_error()->set_message(status.message());
}

void Server::sync_policy(SessionId id) {
  Result<InferenceSession*> s = runtime_->session(id);
  if (!s.ok()) return;
  // A swap-in a request started (not the policy) and whose step failed before settling
  // it: finished copies are settled here, so the session is never left SWAPPING_IN.
  if ((*s)->residency() == Residency::kSwappingIn && !pending_swaps_.contains(id) && (*s)->swap_copy_done()) {
    if (const Status settled = (*s)->settle_swap(); !settled.ok())
      spdlog::warn("session {}: swap-in failed: {}", id, settled.message());
  }
  const Residency r = (*s)->residency();
  if (r == Residency::kResident || r == Residency::kSwapped) {
    pending_swaps_.erase(id);
    policy_.sync(id, r == Residency::kResident);
  }
}

void Server::begin_compute(SessionId id, SessionRecord& record) {
  // Running a step means the session is computing, whatever it last signalled.
  if (record.phase == SessionPhase::kIoWait) {
    record.phase = SessionPhase::kCompute;
    record.estimated_resume_ms = 0;
  }
  policy_.signal_compute(id, now_s());
}

void Server::note_step(SessionId id) {
  Result<const InferenceSession*> s = std::as_const(*runtime_).session(id);
  if (!s.ok()) return;
  policy_.session_ran(id, now_s());
  policy_.set_kv_bytes(id, (*s)->kv_used_bytes());
}

void Server::run_swap_policy() {
  // 1. Finish copies that are done.
  for (auto it = pending_swaps_.begin(); it != pending_swaps_.end();) {
    Result<InferenceSession*> s = runtime_->session(it->first);
    if (!s.ok()) {
      it = pending_swaps_.erase(it);
      continue;
    }
    if (!(*s)->swap_copy_done()) {
      ++it;
      continue;
    }
    const Status settled = (*s)->settle_swap();
    if (!settled.ok()) {
      policy_.swap_failed(it->first);
      spdlog::warn("session {}: swap failed: {}", it->first, settled.message());
    } else if (it->second.out) {
      policy_.swapped_out(it->first);
    } else {
      policy_.swapped_in(it->first, it->second.bytes, now_s() - it->second.started_s);
    }
    it = pending_swaps_.erase(it);
  }
  // 2. Do what the policy decides now.
  for (const SwapDecision& d : policy_.decide(now_s())) {
    Result<InferenceSession*> s = runtime_->session(d.session);
    if (!s.ok()) continue;
    const bool out = d.action == SwapDecision::Action::kSwapOut;
    const size_t bytes = (*s)->kv_used_bytes();
    Result<SwapTicket> ticket = out ? runtime_->swap_out(d.session) : runtime_->swap_in(d.session, SwapUse::kAhead);
    if (!ticket.ok()) {
      policy_.swap_failed(d.session);
      ++counters_.swap_refusals;
      continue;
    }
    ++(out ? counters_.policy_swaps_out : counters_.policy_swaps_in);
    pending_swaps_[d.session] = PendingSwap{out, now_s(), bytes};
  }
}

void Server::handle(zmq::message_t& identity, std::vector<zmq::message_t>& frames) {
  request_started_ = Clock::now();
  ++counters_.requests;
  std::vector<std::string_view> views;
  views.reserve(frames.size());
  for (const zmq::message_t& f : frames) views.emplace_back(static_cast<const char*>(f.data()), f.size());
  Outgoing out;
  DecodeLimits limits;
  limits.max_message_bytes = static_cast<size_t>(options_.max_request_mb * kMiB);
  Result<DecodedRequest> decoded = decode_request(views, limits);
  Status status;
  if (!decoded.ok()) {
    status = decoded.status();
    count_error(status.code() == StatusCode::kOutOfRange ? "too_large" : "malformed");
    // Echo the correlation id when the header at least parsed.
    Request header;
    if (!views.empty() && header.ParseFromArray(views[0].data(), static_cast<int>(views[0].size())))
      out.reply.set_correlation_id(header.correlation_id());
  } else {
    out.reply.set_correlation_id(decoded->request.correlation_id());
    ++counters_.requests_by_type[body_name(decoded->request.body_case())];
    const uint64_t errors_before = errors_total_;
    current_identity_ = &identity;
    try {
      status = dispatch(*decoded, out);
    } catch (const std::exception& e) {  // a CheckError or worse: still an error reply
      status = internal_error(e.what());
      count_error("internal");
    }
    if (!status.ok() && errors_total_ == errors_before) count_error("request_failed");
  }
  if (status.ok() && out.deferred) return;  // a Generate in flight: replied when it finishes
  if (!status.ok()) {
    out.tensors.clear();
    set_error(out.reply, status);
  }
  send(identity, out);
}

// Straight out through the ROUTER (the parts move; the header is serialized into its
// frame), unless a reply is held: then behind it, so that each client's replies keep
// their order (Note [Held replies]).
void Server::send(zmq::message_t& identity, Outgoing& out) {
  zmq::message_t header(out.reply.ByteSizeLong());
  out.reply.SerializeWithCachedSizesToArray(static_cast<uint8_t*>(header.data()));
  std::vector<zmq::message_t> parts;
  parts.reserve(2 + out.tensors.size());
  parts.push_back(std::move(identity));
  parts.push_back(std::move(header));
  for (zmq::message_t& tensor : out.tensors) parts.push_back(std::move(tensor));
  ++counters_.replies;
  if (held_replies_.empty()) {
    const SendOutcome outcome = send_reply(router_, parts);
    if (outcome == SendOutcome::kSent) return;
    if (outcome == SendOutcome::kPeerGone) {
      ++replies_dropped_;
      return;
    }
  }
  held_replies_.push_back({std::move(parts), Clock::now()});
}

Result<Server::SessionRecord*> Server::authorize(const Request& request) {
  auto it = sessions_.find(static_cast<SessionId>(request.session_id()));
  if (it == sessions_.end()) {
    count_error("unknown_session");
    return not_found(fmt::format("no session {}", request.session_id()));
  }
  if (request.session_token().empty() || request.session_token() != it->second.token) {
    count_error("bad_token");
    return permission_denied(fmt::format("session {}: wrong or missing session token", request.session_id()));
  }
  renew(it->second);
  return &it->second;
}

Status Server::dispatch(const DecodedRequest& decoded, Outgoing& out) {
  const Request& request = decoded.request;
  Status status;
  switch (request.body_case()) {
    case Request::kHello: status = on_hello(request.hello(), out); break;
    case Request::kLoadModel: status = on_load_model(request.load_model(), out); break;
    case Request::kOpenSession: status = on_open_session(request.open_session(), out); break;
    case Request::kCloseSession: status = on_close_session(request, out); break;
    case Request::kForward: status = on_forward(request, out); break;
    case Request::kGenerate: status = on_generate(request, out); break;
    case Request::kRunGraph: status = on_run_graph(decoded, out); break;
    case Request::kSignalPhase: status = on_signal_phase(request, out); break;
    case Request::kHeartbeat: status = on_heartbeat(request, out); break;
    case Request::kStats: out.reply.mutable_stats()->set_json(stats_json().dump()); break;
    case Request::BODY_NOT_SET: status = invalid_argument("unknown message type"); break;
  }
  return status;
}

Status Server::on_hello(const Hello& hello, Outgoing& out) {
  if (hello.protocol_version() != kProtocolVersion) {
    count_error("version_mismatch");
    return invalid_argument(fmt::format("protocol version {} from '{}' is not supported: this server speaks version {}",
                                        hello.protocol_version(), hello.client_name(), kProtocolVersion));
  }
  HelloReply* reply = out.reply.mutable_hello();
  reply->set_protocol_version(kProtocolVersion);
  reply->set_server_version("djinn 0.1.0");
  reply->set_device(device_name(runtime_->backend().device()));
  return {};
}

Status Server::on_load_model(const LoadModel& load, Outgoing& out) {
  LoadOptions options;
  const std::optional<DType> dtype = parse_dtype(load.dtype().empty() ? "f32" : load.dtype());
  if (!dtype || !is_floating(*dtype)) {
    count_error("bad_dtype");
    return invalid_argument(fmt::format("unknown weight dtype '{}'", load.dtype()));
  }
  options.dtype = *dtype;
  options.seed = load.seed();
  Result<ModelId> id = runtime_->load_model(load.source(), options);
  if (!id.ok()) {
    count_error("load_model_failed");
    return id.status();
  }
  const auto model = *runtime_->model(*id);
  LoadModelReply* reply = out.reply.mutable_load_model();
  reply->set_model_id(static_cast<uint64_t>(*id));
  reply->set_name(model->config().name);
  reply->set_family(family_name(model->config().family));
  reply->set_params(model->param_count());
  reply->set_weight_bytes(model->weight_bytes());
  reply->set_kv_bytes_per_token(model->kv_bytes_per_token());
  reply->set_vocab_size(model->config().vocab_size);
  reply->set_max_positions(model->config().max_positions);
  return {};
}

Status Server::on_open_session(const OpenSession& open, Outgoing& out) {
  if (!runtime_->model(static_cast<ModelId>(open.model_id())).ok()) {
    count_error("unknown_model");
    return not_found(fmt::format("no model {} (load it first)", open.model_id()));
  }
  // FIFO: while others wait for an arena, a new request queues behind them.
  Result<SessionId> id = admissions_.empty() ? try_admit(open)
                                             : Result<SessionId>(out_of_memory("sessions ahead are waiting for an arena"));
  if (!id.ok() && id.status().code() == StatusCode::kOutOfMemory && options_.admission_timeout_s > 0) {
    // Wait for an arena: retried every loop iteration until the deadline.
    PendingAdmission waiting;
    waiting.identity.copy(*current_identity_);
    waiting.correlation_id = out.reply.correlation_id();
    waiting.open = open;
    waiting.deadline_s = now_s() + options_.admission_timeout_s;
    waiting.last_error = id.status();
    admissions_.push_back(std::move(waiting));
    out.deferred = true;
    return {};
  }
  if (!id.ok()) {
    count_error(id.status().code() == StatusCode::kOutOfMemory ? "out_of_memory" : "open_session_failed");
    return id.status();
  }
  return complete_admission(*id, open, out);
}

Result<SessionId> Server::try_admit(const OpenSession& open) {
  Result<SessionId> id = runtime_->open_session(static_cast<ModelId>(open.model_id()), open.max_context());
  // lru: under memory pressure, evict the least recently used idle session and retry.
  while (!id.ok() && id.status().code() == StatusCode::kOutOfMemory && policy_.kind() == SwapPolicyKind::kLru) {
    const std::optional<int64_t> victim = policy_.eviction_candidate();
    if (!victim || !runtime_->swap_out(*victim).ok() || !runtime_->settle(*victim).ok()) break;
    policy_.swapped_out(*victim);
    ++counters_.lru_evictions;
    id = runtime_->open_session(static_cast<ModelId>(open.model_id()), open.max_context());
  }
  return id;
}

Status Server::complete_admission(SessionId id, const OpenSession& open, Outgoing& out) {
  SessionRecord record;
  Result<std::string> token = random_token();
  if (!token.ok()) {
    (void)runtime_->close_session(id);  // nobody could ever use it
    return token.status();
  }
  record.token = *token;
  record.model = static_cast<ModelId>(open.model_id());
  renew(record);
  OpenSessionReply* reply = out.reply.mutable_open_session();
  reply->set_session_id(static_cast<uint64_t>(id));
  reply->set_session_token(record.token);
  reply->set_capacity((*runtime_->session(id))->capacity());
  sessions_.emplace(id, std::move(record));
  policy_.session_opened(id, now_s());
  ++counters_.sessions_opened;
  return {};
}

void Server::run_admissions() {
  // FIFO: a later request is not admitted before an earlier one that still waits.
  while (!admissions_.empty()) {
    PendingAdmission& waiting = admissions_.front();
    Outgoing out;
    out.reply.set_correlation_id(waiting.correlation_id);
    Result<SessionId> id = try_admit(waiting.open);
    if (id.ok()) {
      ++counters_.admissions_waited;
      const Status done = complete_admission(*id, waiting.open, out);
      if (!done.ok()) set_error(out.reply, done);
    } else if (id.status().code() == StatusCode::kOutOfMemory && now_s() < waiting.deadline_s) {
      return;  // still no room: wait on
    } else {
      const Status failed = id.status().code() == StatusCode::kOutOfMemory
                                ? out_of_memory(fmt::format("no arena within the admission timeout of {} s: {}",
                                                            options_.admission_timeout_s, id.status().message()))
                                : id.status();
      count_error(id.status().code() == StatusCode::kOutOfMemory ? "admission_timeout" : "open_session_failed");
      set_error(out.reply, failed);
    }
    send(waiting.identity, out);
    admissions_.pop_front();
  }
}

Status Server::on_close_session(const Request& request, Outgoing& out) {
  DJINN_RETURN_IF_ERROR(authorize(request));
  cancel_generation(static_cast<SessionId>(request.session_id()), "the session was closed");
  DJINN_RETURN_IF_ERROR(runtime_->close_session(static_cast<SessionId>(request.session_id())));
  sessions_.erase(static_cast<SessionId>(request.session_id()));
  policy_.session_closed(static_cast<SessionId>(request.session_id()));
  pending_swaps_.erase(static_cast<SessionId>(request.session_id()));
  ++counters_.sessions_closed;
  out.reply.mutable_close_session();
  return {};
}

Status Server::on_forward(const Request& request, Outgoing& out) {
  DJINN_ASSIGN_OR_RETURN(SessionRecord * record, authorize(request));
  const auto id = static_cast<SessionId>(request.session_id());
  if (generating_.contains(id)) return unavailable(fmt::format("session {} is busy with a Generate", id));
  const Forward& forward = request.forward();
  const std::vector<int32_t> tokens(forward.tokens().begin(), forward.tokens().end());
  begin_compute(id, *record);
  Result<ForwardResult> ran = runtime_->forward(id, tokens, forward.all_logits());  // swaps in if needed
  sync_policy(id);  // succeeded or not, the policy follows where the KV cache now is
  DJINN_ASSIGN_OR_RETURN(ForwardResult result, std::move(ran));
  note_step(id);
  ForwardReply* reply = out.reply.mutable_forward();
  reply->set_next_token(result.next_token);
  reply->set_rows(result.rows);
  const auto vocab = static_cast<int64_t>(result.logits.size()) / std::max<int64_t>(result.rows, 1);
  set_tensor_meta(*out.reply.add_tensors(), TensorView::contiguous(result.logits.data(), {result.rows, vocab}, DType::kF32));
  out.tensors.emplace_back(result.logits.data(), result.logits.size() * sizeof(float));
  StepTiming* timing = reply->mutable_timing();
  timing->set_dispatch_us(result.dispatch_us);
  timing->set_compute_us(result.compute_us);
  timing->set_server_us(us_since(request_started_));
  return {};
}

Status Server::on_generate(const Request& request, Outgoing& out) {
  DJINN_ASSIGN_OR_RETURN(SessionRecord * record, authorize(request));
  const auto id = static_cast<SessionId>(request.session_id());
  if (generating_.contains(id)) return unavailable(fmt::format("session {} is busy with a Generate", id));
  const Generate& generate = request.generate();
  const std::vector<int32_t> prompt(generate.prompt().begin(), generate.prompt().end());
  const int64_t max_new = generate.max_new_tokens();
  if (max_new < 1) return invalid_argument(fmt::format("max_new_tokens must be >= 1, got {}", max_new));
  DJINN_ASSIGN_OR_RETURN(InferenceSession * session, runtime_->session(id));
  if (prompt.empty()) return invalid_argument("an empty prompt");
  const int64_t room = session->capacity() - session->length() - static_cast<int64_t>(prompt.size());
  if (max_new - 1 > room)  // no overflow: room is small, max_new is checked >= 1
    return out_of_range(fmt::format("{} prompt tokens + {} new tokens after the {} cached exceed the context of {} tokens",
                                    prompt.size(), max_new, session->length(), session->capacity()));
  ActiveGeneration g;
  g.received = request_started_;
  g.correlation_id = request.correlation_id();
  g.session = id;
  g.queue_us = us_since(request_started_);
  begin_compute(id, *record);
  // Swap-in wait: a session the policy moved out comes back before its prefill. Its
  // copy is issued here (or was, ahead of time, by the policy); the prefill is ordered
  // after it on the device, and reports how long it waited (ForwardResult).
  const auto swap_start = Clock::now();
  Status back;
  if (session->residency() == Residency::kSwappingOut) back = session->settle_swap();
  if (back.ok() && session->residency() == Residency::kSwapped) back = runtime_->swap_in(id, SwapUse::kStepFollows).status();
  g.swap_in_us = us_since(swap_start);
  if (!back.ok()) {
    sync_policy(id);
    return back;
  }
  const auto prefill_start = Clock::now();
  Result<ForwardResult> prefill = runtime_->forward(id, prompt);
  sync_policy(id);
  DJINN_ASSIGN_OR_RETURN(ForwardResult first, std::move(prefill));
  g.prefill_ms = us_since(prefill_start) / 1e3;
  g.swap_in_us += first.swap_wait_us;
  g.compute_us = first.compute_us + first.dispatch_us;
  g.tokens.push_back(first.next_token);
  g.remaining = max_new - 1;
  g.last_step_end = Clock::now();
  note_step(id);
  if (g.remaining == 0) {
    g.identity.copy(*current_identity_);
    finish_generation(g, {});
  } else {
    g.identity.copy(*current_identity_);
    generating_.emplace(id, std::move(g));
    policy_.set_busy(id, true);
  }
  out.deferred = true;
  return {};
}

void Server::run_decode_step() {
  if (generating_.empty()) return;
  // Group the generations that can share a step: one model, one context capacity.
  std::map<std::pair<const Model*, int64_t>, std::vector<SessionId>> groups;
  for (auto& [id, g] : generating_) {
    Result<InferenceSession*> s = runtime_->session(id);
    if (!s.ok()) continue;
    groups[{&(*s)->model(), (*s)->capacity()}].push_back(id);
  }
  for (auto& [key, ids] : groups) {
    std::vector<int32_t> tokens;
    for (SessionId id : ids) tokens.push_back(generating_.at(id).tokens.back());
    const auto start = Clock::now();
    Result<std::vector<ForwardResult>> results = runtime_->decode_batch(ids, tokens, /*with_logits=*/false);
    const double step_ms = us_since(start) / 1e3;
    const auto end = Clock::now();
    ++counters_.decode_steps;
    counters_.decode_step_sessions += ids.size();
    counters_.max_decode_batch = std::max<uint64_t>(counters_.max_decode_batch, ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      ActiveGeneration& g = generating_.at(ids[i]);
      g.queue_us += std::chrono::duration<double, std::micro>(start - g.last_step_end).count();
      g.last_step_end = end;
      Result<ForwardResult> one = results.ok() ? Result<ForwardResult>((*results)[i]) : Result<ForwardResult>(results.status());
      if (!results.ok()) {  // find who failed: run this one alone
        one = runtime_->forward(ids[i], std::span(&tokens[i], 1));
      }
      if (!one.ok()) {
        ActiveGeneration failed = std::move(g);
        generating_.erase(ids[i]);
        policy_.set_busy(ids[i], false);
        sync_policy(ids[i]);
        finish_generation(failed, one.status());
        continue;
      }
      g.tokens.push_back(one->next_token);
      g.step_ms.push_back(step_ms);
      g.compute_us += one->compute_us + one->dispatch_us;
      if (auto record = sessions_.find(ids[i]); record != sessions_.end()) renew(record->second);
      note_step(ids[i]);
      if (--g.remaining == 0) {
        ActiveGeneration done = std::move(g);
        generating_.erase(ids[i]);
        policy_.set_busy(ids[i], false);
        finish_generation(done, {});
      }
    }
  }
}

void Server::finish_generation(ActiveGeneration& g, const Status& status) {
  Outgoing out;
  out.reply.set_correlation_id(g.correlation_id);
  if (!status.ok()) {
    set_error(out.reply, status);
    count_error("generate_failed");
  } else {
    GenerateReply* reply = out.reply.mutable_generate();
    for (int32_t t : g.tokens) reply->add_tokens(t);
    reply->set_prefill_ms(g.prefill_ms);
    for (double ms : g.step_ms) reply->add_decode_step_ms(ms);
    StepTiming* timing = reply->mutable_timing();
    timing->set_server_us(us_since(g.received));
    timing->set_queue_us(g.queue_us);
    timing->set_swap_in_us(g.swap_in_us);
    timing->set_compute_us(g.compute_us);
    for (auto [samples, value] : {std::pair{&queue_samples_, g.queue_us}, std::pair{&swap_in_samples_, g.swap_in_us},
                                  std::pair{&compute_samples_, g.compute_us}}) {
      samples->push_back(value);
      if (samples->size() > 4096) samples->pop_front();
    }
  }
  send(g.identity, out);
}

void Server::cancel_generation(SessionId session, const std::string& why) {
  auto it = generating_.find(session);
  if (it == generating_.end()) return;
  ActiveGeneration g = std::move(it->second);
  generating_.erase(it);
  policy_.set_busy(session, false);
  finish_generation(g, unavailable(fmt::format("session {}: generation stopped: {}", session, why)));
}

Status Server::on_run_graph(const DecodedRequest& decoded, Outgoing& out) {
  const RunGraph& run = decoded.request.run_graph();
  constexpr int64_t kMaxPosition = int64_t{1} << 31;
  if (run.seq() < 0 || run.seq() > kMaxPosition || run.past() < 0 || run.past() > kMaxPosition) {
    count_error("bad_symbols");
    return invalid_argument(fmt::format("seq {} / past {} must be in [0, 2^31]", run.seq(), run.past()));
  }
  uint64_t id = run.graph_hash();
  std::span<const TensorView> io = decoded.tensors;
  std::optional<StoredGraph> uploaded;  // stored only once it has run successfully
  if (run.has_graph()) {
    // Upload: the graph plus its resident (weight and kv) inputs; io inputs follow.
    Result<Graph> graph = graph_from_proto(run.graph());
    if (!graph.ok()) {
      count_error("bad_graph");
      return graph.status();
    }
    StoredGraph stored{std::move(graph).value(), {}, {}};
    const auto& values = stored.graph.values();
    size_t next = 0;
    id = stored.graph.structural_hash();
    for (const Value& v : values) {
      if (v.producer >= 0) continue;
      const bool is_io = v.lifetime == LifetimeClass::kIo;
      stored.input_is_io.push_back(is_io);
      if (is_io) continue;
      if (next >= decoded.tensors.size()) {
        count_error("bad_tensor");
        return invalid_argument(fmt::format("graph input '{}' ({}) was not sent", v.name, lifetime_name(v.lifetime)));
      }
      HostTensor resident = HostTensor::copy_of(decoded.tensors[next++]);
      id = fnv1a(id, resident.bytes.data(), resident.bytes.size());
      stored.resident.push_back(std::move(resident));
    }
    io = io.subspan(next);
    uploaded = std::move(stored);
  }
  StoredGraph* found = nullptr;
  if (uploaded) {
    found = &*uploaded;
  } else if (auto it = graphs_.find(id); it != graphs_.end()) {
    found = &it->second;
  } else {
    count_error("unknown_graph");
    return not_found(fmt::format("graph {:016x} is not known here: send it with the request", id));
  }
  StoredGraph& stored = *found;
  std::vector<TensorView> inputs;
  inputs.reserve(stored.input_is_io.size());
  size_t next_resident = 0, next_io = 0;
  for (bool is_io : stored.input_is_io) {
    if (is_io) {
      if (next_io >= io.size()) break;
      inputs.push_back(io[next_io++]);
    } else {
      inputs.push_back(stored.resident[next_resident++].view());
    }
  }
  if (inputs.size() != stored.input_is_io.size() || next_io != io.size()) {
    count_error("bad_tensor");
    return invalid_argument(fmt::format("the graph takes {} io inputs, {} were sent",
                                        std::count(stored.input_is_io.begin(), stored.input_is_io.end(), true), io.size()));
  }
  Result<std::vector<HostTensor>> outputs = runtime_->run_graph(stored.graph, inputs, {.seq = run.seq(), .past = run.past()});
  if (!outputs.ok()) {
    count_error("run_graph_failed");
    return outputs.status();
  }
  if (uploaded) {
    if (graphs_.size() >= kMaxGraphs && !graphs_.contains(id)) graphs_.erase(graphs_.begin());
    graphs_.insert_or_assign(id, std::move(*uploaded));
    ++counters_.graphs_uploaded;
  }
  RunGraphReply* reply = out.reply.mutable_run_graph();
  reply->set_graph_hash(id);
  for (HostTensor& t : *outputs) {
    set_tensor_meta(*out.reply.add_tensors(), t.view());
    out.tensors.push_back(tensor_frame(t));
  }
  reply->mutable_timing()->set_server_us(us_since(request_started_));
  return {};
}

Status Server::on_signal_phase(const Request& request, Outgoing& out) {
  DJINN_ASSIGN_OR_RETURN(SessionRecord * record, authorize(request));
  const SignalPhase& signal = request.signal_phase();
  if (signal.estimated_resume_ms() < 0 || !std::isfinite(signal.estimated_resume_ms())) {
    count_error("bad_signal");
    return invalid_argument(fmt::format("estimated_resume_ms must be a finite number >= 0, got {}", signal.estimated_resume_ms()));
  }
  switch (signal.phase()) {
    case SignalPhase::IO_WAIT:
      record->phase = SessionPhase::kIoWait;
      record->estimated_resume_ms = signal.estimated_resume_ms();
      break;
    case SignalPhase::COMPUTE:
      record->phase = SessionPhase::kCompute;
      record->estimated_resume_ms = 0;
      break;
    case SignalPhase::PHASE_UNSPECIFIED:
    default:
      count_error("bad_signal");
      return invalid_argument(fmt::format("unknown phase {} (IO_WAIT or COMPUTE)", static_cast<int>(signal.phase())));
  }
  renew(*record);
  ++counters_.phase_signals;
  const auto session = static_cast<SessionId>(request.session_id());
  if (record->phase == SessionPhase::kIoWait)
    policy_.signal_io_wait(session, now_s(),
                           signal.estimated_resume_ms() > 0 ? std::optional(signal.estimated_resume_ms()) : std::nullopt);
  else
    policy_.signal_compute(session, now_s());
  run_swap_policy();  // proactive: the swap-out starts now, not at the next tick
  out.reply.mutable_signal_phase()->set_state(record->phase == SessionPhase::kIoWait ? "IO_WAIT" : "COMPUTE");
  return {};
}

Status Server::on_heartbeat(const Request& request, Outgoing& out) {
  DJINN_ASSIGN_OR_RETURN(SessionRecord * record, authorize(request));
  out.reply.mutable_heartbeat()->set_lease_remaining_s(
      std::chrono::duration<double>(record->lease_deadline - Clock::now()).count());
  return {};
}

nlohmann::json Server::stats_json() const {
  nlohmann::json stats = runtime_->stats_json();
  nlohmann::json sessions = nlohmann::json::array();
  // Sessions by state along ADMITTING -> RESIDENT <-> SWAPPING_OUT -> SWAPPED <->
  // SWAPPING_IN -> RESIDENT -> CLOSED: those waiting for an arena (no id yet), the open
  // ones by where their KV cache is, and those closed so far (by the client or a lease).
  std::map<std::string, size_t> states{{"ADMITTING", admissions_.size()}, {"RESIDENT", 0},   {"SWAPPING_OUT", 0},
                                       {"SWAPPED", 0},                    {"SWAPPING_IN", 0}, {"CLOSED", counters_.sessions_closed}};
  const auto now = Clock::now();
  for (const auto& [id, record] : sessions_) {
    const InferenceSession* s = *runtime_->session(id);
    const char* state = residency_name(s->residency());
    ++states[state];
    sessions.push_back({{"id", id},
                        {"model", record.model},
                        {"length", s->length()},
                        {"capacity", s->capacity()},
                        {"phase", record.phase == SessionPhase::kIoWait ? "IO_WAIT" : "COMPUTE"},
                        {"state", state},
                        {"kv_used_bytes", s->kv_used_bytes()},
                        {"estimated_resume_ms", record.estimated_resume_ms},
                        {"lease_remaining_s", std::chrono::duration<double>(record.lease_deadline - now).count()}});
  }
  stats["sessions"] = sessions;
  stats["session_states"] = states;
  auto summary = [](const std::deque<double>& samples) {
    std::vector<double> sorted(samples.begin(), samples.end());
    std::sort(sorted.begin(), sorted.end());
    auto at = [&](double p) {
      return sorted.empty() ? 0.0 : sorted[std::min(sorted.size() - 1, static_cast<size_t>(p * static_cast<double>(sorted.size() - 1) + 0.5))];
    };
    return nlohmann::json{{"p50_us", at(0.5)}, {"p99_us", at(0.99)}, {"samples", sorted.size()}};
  };
  stats["latency"] = {{"queue", summary(queue_samples_)},
                      {"swap_in", summary(swap_in_samples_)},
                      {"compute", summary(compute_samples_)}};
  stats["generating"] = generating_.size();
  const Status invariants = runtime_->vmu().check_invariants();
  stats["invariants"] = invariants.ok() ? "ok" : invariants.message();
  stats["policy"] = options_.policy;
  stats["endpoints"] = endpoints_;
  stats["threads"] = {{"pin_cpu", options_.pin_cpu}, {"busy_poll_us", options_.busy_poll_us}};
  stats["counters"] = {{"requests", counters_.requests},
                       {"replies", counters_.replies},
                       {"replies_dropped", replies_dropped_},
                       {"requests_by_type", counters_.requests_by_type},
                       {"errors", counters_.errors},
                       {"sessions_opened", counters_.sessions_opened},
                       {"sessions_closed", counters_.sessions_closed},
                       {"leases_expired", counters_.leases_expired},
                       {"phase_signals", counters_.phase_signals},
                       {"graphs_uploaded", counters_.graphs_uploaded},
                       {"graphs_stored", graphs_.size()},
                       {"policy_swaps_out", counters_.policy_swaps_out},
                       {"policy_swaps_in", counters_.policy_swaps_in},
                       {"swap_refusals", counters_.swap_refusals},
                       {"lru_evictions", counters_.lru_evictions},
                       {"decode_steps", counters_.decode_steps},
                       {"decode_step_sessions", counters_.decode_step_sessions},
                       {"max_decode_batch", counters_.max_decode_batch},
                       {"admissions_waited", counters_.admissions_waited},
                       {"admissions_waiting", admissions_.size()}};
  return stats;
}

}  // namespace djinn::rpc
