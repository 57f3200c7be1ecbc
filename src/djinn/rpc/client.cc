#include "djinn/rpc/client.h"

#include <fmt/format.h>
#include <sched.h>

#include "djinn/core/cpu_affinity.h"
#include "djinn/rpc/graph_codec.h"
#include "djinn/rpc/wire.h"

namespace djinn {
namespace {
// One I/O thread, on `io_cpu` when that is >= 0 (set before the socket starts it).
zmq::context_t make_context(int io_cpu) {
  zmq::context_t context(1);
  if (io_cpu >= 0) context.set(zmq::ctxopt::thread_affinity_cpu_add, io_cpu);
  return context;
}
}  // namespace

Client::Client(std::string address, const ClientOptions& options)
    : address_(std::move(address)), options_(options), context_(make_context(options.io_cpu)), socket_(context_, zmq::socket_type::dealer) {
  socket_.set(zmq::sockopt::linger, 0);
  // Every reply answers a request this client sent, so its receive queue never refuses
  // one: with ZeroMQ's default of 1000, a client that sent thousands of requests before
  // reading lost the replies past its queue and the server's (the server counts them in
  // replies_dropped; the client waited for them until its timeout). What the queue
  // holds is bounded by the requests this client has in flight.
  socket_.set(zmq::sockopt::rcvhwm, 0);
}

Client::~Client() { socket_.close(); }

Result<std::unique_ptr<Client>> Client::connect(const std::string& address, const ClientOptions& options) {
  if (options.io_cpu < -1 || (options.io_cpu >= 0 && !is_startup_cpu(options.io_cpu)))
    return invalid_argument(fmt::format("io_cpu {} is not one of the CPUs this process may use", options.io_cpu));
  std::unique_ptr<Client> client(new Client(address, options));
  try {
    client->socket_.connect(address);
  } catch (const zmq::error_t& e) {
    return invalid_argument(fmt::format("cannot connect to '{}': {}", address, e.what()));
  }
  rpc::Request hello;
  hello.mutable_hello()->set_protocol_version(rpc::kProtocolVersion);
  hello.mutable_hello()->set_client_name(options.name);
  Result<ReplyMessage> reply = client->call(hello);
  if (!reply.ok()) return Status(reply.status().code(), fmt::format("{}: {}", address, reply.status().message()));
  return client;
}

Result<uint64_t> Client::send(rpc::Request& request, std::span<const TensorView> tensors) {
  const uint64_t id = next_correlation_id_++;
  request.set_correlation_id(id);
  request.clear_tensors();
  for (const TensorView& t : tensors) {
    if (!t.is_contiguous()) return invalid_argument("tensors sent to the server must be contiguous");
    rpc::set_tensor_meta(*request.add_tensors(), t);
  }
  const std::string header = request.SerializeAsString();
  try {
    socket_.send(zmq::buffer(header), tensors.empty() ? zmq::send_flags::none : zmq::send_flags::sndmore);
    for (size_t i = 0; i < tensors.size(); ++i)
      socket_.send(zmq::const_buffer(tensors[i].data, tensors[i].nbytes()),
                   i + 1 == tensors.size() ? zmq::send_flags::none : zmq::send_flags::sndmore);
  } catch (const zmq::error_t& e) {
    return internal_error(fmt::format("send to {}: {}", address_, e.what()));
  }
  return id;
}

Result<ReplyMessage> Client::receive(uint64_t correlation_id) {
  for (;;) {
    if (auto it = early_.find(correlation_id); it != early_.end()) {
      ReplyMessage message = std::move(it->second);
      early_.erase(it);
      if (message.reply.has_error())
        return Status(rpc::status_code_from_wire(message.reply.error().code()), message.reply.error().message());
      return message;
    }
    zmq::pollitem_t items[] = {{socket_.handle(), 0, ZMQ_POLLIN, 0}};
    if (options_.busy_poll_us > 0) {  // see ClientOptions::busy_poll_us
      const auto spin_start = std::chrono::steady_clock::now();
      while (std::chrono::steady_clock::now() - spin_start < std::chrono::microseconds(options_.busy_poll_us)) {
        if (socket_.get(zmq::sockopt::events) & ZMQ_POLLIN) break;
        sched_yield();
      }
    }
    try {
      zmq::poll(items, 1, std::chrono::milliseconds(static_cast<int64_t>(options_.timeout_s * 1000)));
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      return internal_error(fmt::format("poll: {}", e.what()));
    }
    if (!(items[0].revents & ZMQ_POLLIN))
      return internal_error(fmt::format("no reply from {} within {} s", address_, options_.timeout_s));
    ReplyMessage message;
    zmq::message_t header;
    (void)socket_.recv(header);
    while (socket_.get(zmq::sockopt::rcvmore)) {
      zmq::message_t frame;
      (void)socket_.recv(frame);
      message.frames.push_back(std::move(frame));
    }
    if (!message.reply.ParseFromArray(header.data(), static_cast<int>(header.size())))
      return internal_error(fmt::format("{} sent a reply that does not parse", address_));
    std::vector<std::string_view> views;
    for (const zmq::message_t& f : message.frames) views.emplace_back(static_cast<const char*>(f.data()), f.size());
    Result<std::vector<TensorView>> tensors = rpc::decode_tensors(message.reply.tensors(), views, message.realigned);
    if (!tensors.ok()) return internal_error(fmt::format("{} sent bad tensors: {}", address_, tensors.status().message()));
    message.tensors = std::move(tensors).value();
    early_.emplace(message.reply.correlation_id(), std::move(message));
  }
}

Result<ReplyMessage> Client::call(rpc::Request& request, std::span<const TensorView> tensors) {
  DJINN_ASSIGN_OR_RETURN(uint64_t id, send(request, tensors));
  return receive(id);
}

Result<rpc::LoadModelReply> Client::load_model(const std::string& source, const std::string& dtype, uint64_t seed) {
  rpc::Request request;
  rpc::LoadModel* load = request.mutable_load_model();
  load->set_source(source);
  load->set_dtype(dtype);
  load->set_seed(seed);
  DJINN_ASSIGN_OR_RETURN(ReplyMessage reply, call(request));
  return reply.reply.load_model();
}

Result<RemoteSession> Client::open_session(uint64_t model_id, int64_t max_context) {
  rpc::Request request;
  request.mutable_open_session()->set_model_id(model_id);
  request.mutable_open_session()->set_max_context(max_context);
  DJINN_ASSIGN_OR_RETURN(ReplyMessage reply, call(request));
  const rpc::OpenSessionReply& open = reply.reply.open_session();
  return RemoteSession(*this, open.session_id(), open.session_token(), open.capacity());
}

Result<nlohmann::json> Client::stats() {
  rpc::Request request;
  request.mutable_stats();
  DJINN_ASSIGN_OR_RETURN(ReplyMessage reply, call(request));
  nlohmann::json parsed = nlohmann::json::parse(reply.reply.stats().json(), nullptr, false);
  if (parsed.is_discarded()) return internal_error("the server's stats are not valid JSON");
  return parsed;
}

void RemoteSession::fill(rpc::Request& request) const {
  request.set_session_id(id_);
  request.set_session_token(token_);
}

Result<RemoteForwardResult> RemoteSession::forward(std::span<const int32_t> tokens, bool all_logits) {
  rpc::Request request;
  fill(request);
  for (int32_t t : tokens) request.mutable_forward()->add_tokens(t);
  request.mutable_forward()->set_all_logits(all_logits);
  DJINN_ASSIGN_OR_RETURN(ReplyMessage reply, client_->call(request));
  RemoteForwardResult result;
  result.next_token = reply.reply.forward().next_token();
  result.rows = reply.reply.forward().rows();
  result.timing = reply.reply.forward().timing();
  if (reply.tensors.size() != 1 || reply.tensors[0].dtype != DType::kF32)
    return internal_error("a forward reply must carry one f32 logits tensor");
  const float* logits = reply.tensors[0].as<const float>();
  result.logits.assign(logits, logits + reply.tensors[0].numel());
  return result;
}

Result<RemoteGenerateResult> RemoteSession::generate(std::span<const int32_t> prompt, int64_t max_new_tokens) {
  rpc::Request request;
  fill(request);
  for (int32_t t : prompt) request.mutable_generate()->add_prompt(t);
  request.mutable_generate()->set_max_new_tokens(max_new_tokens);
  DJINN_ASSIGN_OR_RETURN(ReplyMessage reply, client_->call(request));
  const rpc::GenerateReply& g = reply.reply.generate();
  RemoteGenerateResult result;
  result.tokens.assign(g.tokens().begin(), g.tokens().end());
  result.prefill_ms = g.prefill_ms();
  result.decode_step_ms.assign(g.decode_step_ms().begin(), g.decode_step_ms().end());
  result.server_us = g.timing().server_us();
  return result;
}

Status RemoteSession::signal(rpc::SignalPhase::Phase phase, double estimated_resume_ms) {
  rpc::Request request;
  fill(request);
  request.mutable_signal_phase()->set_phase(phase);
  request.mutable_signal_phase()->set_estimated_resume_ms(estimated_resume_ms);
  return client_->call(request).status();
}

Result<double> RemoteSession::heartbeat() {
  rpc::Request request;
  fill(request);
  request.mutable_heartbeat();
  DJINN_ASSIGN_OR_RETURN(ReplyMessage reply, client_->call(request));
  return reply.reply.heartbeat().lease_remaining_s();
}

Status RemoteSession::close() {
  rpc::Request request;
  fill(request);
  request.mutable_close_session();
  return client_->call(request).status();
}

RemoteGraph::RemoteGraph(Client& client, const Graph& graph, std::vector<TensorView> resident)
    : client_(&client), resident_(std::move(resident)) {
  rpc::graph_to_proto(graph, def_);
}

Result<std::vector<HostTensor>> RemoteGraph::run(std::span<const TensorView> io, const SymbolBindings& symbols,
                                                 rpc::StepTiming* timing) {
  rpc::Request request;
  rpc::RunGraph* run = request.mutable_run_graph();
  run->set_seq(symbols.seq);
  run->set_past(symbols.past);
  std::vector<TensorView> frames;
  if (id_ == 0) {
    *run->mutable_graph() = def_;
    frames = resident_;
  } else {
    run->set_graph_hash(id_);
  }
  frames.insert(frames.end(), io.begin(), io.end());
  DJINN_ASSIGN_OR_RETURN(ReplyMessage reply, client_->call(request, frames));
  id_ = reply.reply.run_graph().graph_hash();
  if (timing != nullptr) *timing = reply.reply.run_graph().timing();
  std::vector<HostTensor> outputs;
  for (const TensorView& t : reply.tensors) outputs.push_back(HostTensor::copy_of(t));
  return outputs;
}

}  // namespace djinn
