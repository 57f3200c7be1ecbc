// `djinn bench os-tax`: what remote execution costs over running in-process.
//
// For each workload — micro_add (one 1x1 add), layer (one transformer block over
// 4 x 128 rows of hidden 512), full_forward (the gpt2 preset over 128 tokens) — it
// measures in the same run:
//   native  the in-process Runtime (the library path);
//   cold    the first remote call on a fresh server (graph upload, meta-simulation, plan);
//   warm    later remote calls;
// and beside them the floor: a 64-byte ping-pong over a plain socket of the same kind
// (TCP with TCP_NODELAY, or a Unix socket). The server is a separate `djinn serve`
// process, so nothing is shared but the socket.
//
// Thread hops on the warm path (Note [Server threads] in rpc/server.cc): client thread -> ZeroMQ I/O thread
// -> socket -> server's ZeroMQ I/O thread -> server thread, which decodes, executes and
// replies with no further hop; the reply takes the same way back. The floor has one
// wake-up per direction, ZeroMQ adds its I/O threads' on both sides: four hand-offs
// between two threads on one CPU per round trip, whose price the run also measures.
#include <fmt/format.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <iostream>
#include <random>
#include <thread>
#include <zmq.hpp>

#include "djinn/cli/bench_os_tax.h"
#include "djinn/cli/bench_stats.h"
#include "djinn/core/cpu_affinity.h"
#include "djinn/core/machine_info.h"
#include "djinn/rpc/client.h"
#include "djinn/rpc/wire.h"
#include "djinn/runtime/runtime.h"

extern char** environ;

namespace djinn::cli {
namespace {

using Clock = std::chrono::steady_clock;
double us_since(Clock::time_point t) { return std::chrono::duration<double, std::micro>(Clock::now() - t).count(); }

// ---- the floor: 64-byte ping-pong over a plain socket ---------------------------

// Reads or writes all n bytes; false on error or a closed peer (errno says which).
// Allocates nothing, so a forked child may call it.
bool transfer_all(int fd, char* data, size_t n, bool write_side) {
  size_t done = 0;
  while (done < n) {
    const ssize_t r = write_side ? ::write(fd, data + done, n - done) : ::read(fd, data + done, n - done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    done += static_cast<size_t>(r);
  }
  return true;
}

Status full_io(int fd, char* data, size_t n, bool write_side) {
  errno = 0;
  if (transfer_all(fd, data, n, write_side)) return {};
  return internal_error(fmt::format("ping-pong socket: {}", errno == 0 ? "closed" : std::strerror(errno)));
}

// Round-trip times (us) of a 64-byte ping-pong with a forked echo process on
// `echo_cpu` (-1: wherever the kernel puts it).
Result<std::vector<double>> ping_pong_floor(bool tcp, int iterations, int echo_cpu) {
  int listener = tcp ? ::socket(AF_INET, SOCK_STREAM, 0) : ::socket(AF_UNIX, SOCK_STREAM, 0);
  if (listener < 0) return internal_error("floor: socket()");
  sockaddr_storage address{};
  socklen_t length;
  std::string unix_path;
  if (tcp) {
    auto* in = reinterpret_cast<sockaddr_in*>(&address);
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    length = sizeof(sockaddr_in);
  } else {
    auto* un = reinterpret_cast<sockaddr_un*>(&address);
    un->sun_family = AF_UNIX;
    unix_path = fmt::format("/tmp/djinn-floor-{}.sock", ::getpid());
    ::unlink(unix_path.c_str());
    std::snprintf(un->sun_path, sizeof un->sun_path, "%s", unix_path.c_str());
    length = sizeof(sockaddr_un);
  }
  if (::bind(listener, reinterpret_cast<sockaddr*>(&address), length) != 0 || ::listen(listener, 1) != 0)
    return internal_error(fmt::format("floor: bind/listen: {}", std::strerror(errno)));
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length);
  // The echo side is a child process, as the server is: a thread of this process would
  // be woken on a busy core, which costs less than waking an idle one.
  const pid_t echo = ::fork();
  if (echo < 0) return internal_error(fmt::format("floor: fork: {}", std::strerror(errno)));
  if (echo == 0) {  // only async-signal-safe calls from here: the parent has threads
    if (echo_cpu >= 0) {  // a plain system call: the child may not use much else
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(echo_cpu, &set);
      ::sched_setaffinity(0, sizeof set, &set);
    }
    const int fd = ::accept(listener, nullptr, nullptr);
    if (fd < 0) ::_exit(1);
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char buffer[64];
    for (int i = 0; i < iterations; ++i)
      if (!transfer_all(fd, buffer, 64, false) || !transfer_all(fd, buffer, 64, true)) break;
    ::_exit(0);
  }
  const int fd = ::socket(tcp ? AF_INET : AF_UNIX, SOCK_STREAM, 0);
  const int one = 1;
  if (tcp) ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::vector<double> samples;
  samples.reserve(static_cast<size_t>(iterations));  // no reallocation between timed calls
  Status status;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), length) != 0) {
    status = internal_error(fmt::format("floor: connect: {}", std::strerror(errno)));
    ::kill(echo, SIGKILL);  // it waits in accept() for a connection that never comes
  } else {
    char buffer[64] = {};
    for (int i = 0; i < iterations && status.ok(); ++i) {
      const auto start = Clock::now();
      status = full_io(fd, buffer, 64, true);
      if (status.ok()) status = full_io(fd, buffer, 64, false);
      samples.push_back(us_since(start));
    }
  }
  ::close(fd);
  ::waitpid(echo, nullptr, 0);
  ::close(listener);
  if (!unix_path.empty()) ::unlink(unix_path.c_str());
  DJINN_RETURN_IF_ERROR(status);
  return samples;
}

// ---- a same-CPU hand-off: the wake-up each ZeroMQ I/O-thread hop costs -----------

// Round-trip times (us) of two threads of this process, both on `cpu` (-1: wherever
// the kernel puts them), waking each other in turn through eventfds: two hand-offs per
// round trip, each the kind that ZeroMQ adds between an application thread and its I/O
// thread on one CPU (an eventfd write, the other thread's wake-up and read).
Result<std::vector<double>> same_cpu_handoff_round_trips(int cpu, int iterations) {
  struct Eventfd {
    int fd = ::eventfd(0, EFD_CLOEXEC);
    ~Eventfd() {
      if (fd >= 0) ::close(fd);
    }
    bool signal() const {
      const uint64_t one = 1;
      ssize_t r;
      while ((r = ::write(fd, &one, sizeof one)) < 0 && errno == EINTR) {
      }
      return r == sizeof one;
    }
    bool wait() const {
      uint64_t value;
      ssize_t r;
      while ((r = ::read(fd, &value, sizeof value)) < 0 && errno == EINTR) {
      }
      return r == sizeof value;
    }
  };
  const Eventfd ping, pong;
  if (ping.fd < 0 || pong.fd < 0) return internal_error(fmt::format("hand-off: eventfd: {}", std::strerror(errno)));
  // Whichever side stops early (an eventfd call failed) sets `stop` and wakes the
  // other, which then stops too: neither is left blocked in a read.
  std::atomic<bool> stop{false};
  auto stop_both = [&](const Eventfd& wake) {
    stop.store(true, std::memory_order_relaxed);
    wake.signal();
  };
  std::thread partner([&] {
    const ScopedCpuPin pin(cpu);
    for (int i = 0; i < iterations; ++i)
      if (!ping.wait() || stop.load(std::memory_order_relaxed) || !pong.signal()) return stop_both(pong);
  });
  std::vector<double> samples;
  samples.reserve(static_cast<size_t>(iterations));  // no reallocation between timed calls
  {
    const ScopedCpuPin pin(cpu);
    for (int i = 0; i < iterations; ++i) {
      const auto start = Clock::now();
      if (!ping.signal() || !pong.wait() || stop.load(std::memory_order_relaxed)) {
        stop_both(ping);
        break;
      }
      samples.push_back(us_since(start));
    }
  }
  partner.join();
  if (samples.size() != static_cast<size_t>(iterations)) return internal_error("hand-off: an eventfd failed");
  return samples;
}

// ---- the server process ---------------------------------------------------------

// The socket file of an ipc:// address ("" for other transports).
std::string ipc_path(const std::string& address) { return address.rfind("ipc://", 0) == 0 ? address.substr(6) : ""; }

// A child process running `djinn ARGS...` (this binary), output discarded; SIGTERM and
// reaped when this goes, and then `listen_address`'s ipc socket file removed (a child
// killed by a signal leaves it behind).
class ChildProcess {
 public:
  static Result<std::unique_ptr<ChildProcess>> spawn(std::vector<std::string> args, std::string listen_address = "") {
    args.insert(args.begin(), "djinn");
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    const int rc = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) return internal_error(fmt::format("cannot start `djinn {}`: {}", args[1], std::strerror(rc)));
    return std::unique_ptr<ChildProcess>(new ChildProcess(pid, ipc_path(listen_address)));
  }
  ~ChildProcess() {
    ::kill(pid_, SIGTERM);
    int status;
    ::waitpid(pid_, &status, 0);
    if (!socket_file_.empty()) ::unlink(socket_file_.c_str());
  }

 private:
  ChildProcess(pid_t pid, std::string socket_file) : pid_(pid), socket_file_(std::move(socket_file)) {}
  pid_t pid_;
  std::string socket_file_;
};

// The runtime configuration of both sides, so that the native and the remote runs
// differ by the process boundary alone: a 2-GiB VMU, activation memory reserved at
// model load for a 512-token prompt (djinn serve's default), and the swap space of
// --host-swap-pool-gb, made ready in the background as djinn serve does, and none by
// default: os-tax never swaps, and djinn serve's default 1-GiB pool is memory each fresh
// server would touch at start for nothing measured here (on the 2-core EPYC VM its
// servers' first forwards ran slower with it: bench/results/cpu/README.md).
constexpr double kDeviceMemGb = 2;
constexpr int64_t kReservePrefillTokens = 512;

RuntimeOptions native_runtime_options(const OsTaxOptions& options) {
  RuntimeOptions o;
  o.device = options.device == "cuda" ? DeviceKind::kCuda : DeviceKind::kCpu;
  o.device_mem_gb = kDeviceMemGb;
  o.reserve_prefill_tokens = kReservePrefillTokens;
  o.host_pool_gb = options.host_swap_pool_gb;
  o.host_pool_background = true;  // as serve_command.cc sets it
  return o;
}

// `djinn serve`'s arguments, the same runtime as native_runtime_options.
std::vector<std::string> server_args(const std::string& address, const OsTaxOptions& options) {
  return {"serve",
          "--listen", address,
          "--device", options.device,
          "--device-mem-gb", fmt::format("{}", kDeviceMemGb),
          "--reserve-prefill-tokens", std::to_string(kReservePrefillTokens),
          "--host-swap-pool-gb", fmt::format("{}", options.host_swap_pool_gb),
          "--session-lease-s", "3600",
          "--busy-poll-us", std::to_string(options.busy_poll_us),
          "--pin-cpu", std::to_string(options.pin_cpu)};
}

Result<std::unique_ptr<ChildProcess>> start_server(const std::string& address, const OsTaxOptions& options) {
  return ChildProcess::spawn(server_args(address, options), address);
}

// ---- the ZeroMQ reference: a bare ROUTER echo in another process ------------------

// Round-trip times (us) of 64-byte messages from a DEALER to a `djinn bench zmq-echo`
// process at `address`, pinned as the server and the client are (echo and its I/O
// thread on `echo_cpu`, this thread and the DEALER's I/O thread on `client_cpu`): what
// ZeroMQ itself costs over the plain-socket floor, before anything djinn does.
Result<std::vector<double>> zmq_echo_round_trips(const std::string& address, int iterations, int echo_cpu,
                                                 int client_cpu) {
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<ChildProcess> echo,
                         ChildProcess::spawn({"bench", "zmq-echo", "--listen", address, "--pin-cpu", std::to_string(echo_cpu)},
                                             address));
  const ScopedCpuPin pin(client_cpu);
  zmq::context_t context(1);
  if (client_cpu >= 0) context.set(zmq::ctxopt::thread_affinity_cpu_add, client_cpu);
  zmq::socket_t dealer(context, zmq::socket_type::dealer);
  dealer.set(zmq::sockopt::linger, 0);
  dealer.set(zmq::sockopt::rcvtimeo, 10000);
  dealer.connect(address);
  std::vector<double> samples;
  samples.reserve(static_cast<size_t>(iterations));  // no reallocation between timed calls
  char payload[64] = {};
  for (int i = 0; i < iterations + iterations / 10; ++i) {  // the first tenth warms up
    const auto start = Clock::now();
    dealer.send(zmq::const_buffer(payload, sizeof payload), zmq::send_flags::none);
    zmq::message_t reply;
    if (!dealer.recv(reply)) return unavailable(fmt::format("zmq echo at {}: no reply in 10 s", address));
    if (i >= iterations / 10) samples.push_back(us_since(start));
  }
  return samples;
}

std::string free_tcp_address() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in in{};
  in.sin_family = AF_INET;
  in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof in;
  ::bind(fd, reinterpret_cast<sockaddr*>(&in), length);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&in), &length);
  const int port = ntohs(in.sin_port);
  ::close(fd);
  return fmt::format("tcp://127.0.0.1:{}", port);
}

// ---- workloads ------------------------------------------------------------------

struct GraphWorkload {
  Graph graph{Phase::kPrefill};
  std::vector<HostTensor> resident;  // weight and kv inputs, graph-input order
  std::vector<HostTensor> io;        // io inputs, graph-input order
  SymbolBindings symbols;
};

HostTensor random_tensor(Shape shape, std::mt19937& rng, float scale) {
  HostTensor t{DType::kF32, shape, std::vector<std::byte>(static_cast<size_t>(num_elements(shape)) * 4)};
  std::uniform_real_distribution<float> dist(-scale, scale);
  auto* p = reinterpret_cast<float*>(t.bytes.data());
  for (int64_t i = 0; i < num_elements(shape); ++i) p[i] = dist(rng);
  return t;
}

GraphWorkload micro_add() {
  GraphWorkload w;
  const ValueId a = w.graph.add_io_input("a", DType::kF32, {1, 1});
  const ValueId b = w.graph.add_io_input("b", DType::kF32, {1, 1});
  w.graph.mark_output(w.graph.add_node(OpKind::kAdd, {a, b}));
  std::mt19937 rng(1);
  w.io = {random_tensor({1, 1}, rng, 1), random_tensor({1, 1}, rng, 1)};
  w.symbols = {.seq = 1, .past = 0};
  return w;
}

// One pre-LayerNorm GPT-2 block over rows = batch x seq tokens of width `hidden`.
// Our attention op attends within one sequence, so the 4 x 128 rows attend causally
// as one sequence of 512 (a little more attention work than 4 separate sequences).
GraphWorkload transformer_layer(int64_t rows, int64_t hidden, int64_t heads) {
  GraphWorkload w;
  Graph& g = w.graph;
  std::mt19937 rng(2);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hidden));
  auto weight = [&](const char* name, Shape shape, float s) {
    w.resident.push_back(random_tensor(shape, rng, s));
    SymShape sym;
    for (int64_t d : shape) sym.dims.emplace_back(d);
    return g.add_weight(name, DType::kF32, sym);
  };
  auto layernorm = [&](ValueId x, const char* name) {
    return g.add_node(OpKind::kLayerNorm, {x, weight(name, {hidden}, 1.0f), weight(name, {hidden}, 0.1f)},
                      OpAttrs{.eps = 1e-5f});
  };
  auto linear = [&](ValueId x, const char* name, int64_t in, int64_t out) {
    return g.add_node(OpKind::kAdd, {g.add_node(OpKind::kMatMul, {x, weight(name, {in, out}, scale)}),
                                     weight(name, {out}, 0.01f)});
  };
  const ValueId k_cache = g.add_kv("kv.0.k", DType::kF32, {rows, hidden});
  w.resident.push_back(random_tensor({rows, hidden}, rng, 0));
  const ValueId v_cache = g.add_kv("kv.0.v", DType::kF32, {rows, hidden});
  w.resident.push_back(random_tensor({rows, hidden}, rng, 0));
  const ValueId x = g.add_io_input("x", DType::kF32, {Symbol::kSeq, hidden});
  const ValueId positions = g.add_io_input("positions", DType::kI32, {Symbol::kSeq});
  const ValueId qkv = linear(layernorm(x, "ln_1"), "c_attn", hidden, 3 * hidden);
  auto split = [&](int64_t i) { return g.add_node(OpKind::kSlice, {qkv}, OpAttrs{.start = i * hidden, .length = hidden}); };
  const ValueId attn = g.add_node(
      OpKind::kAttention,
      {split(0), g.add_node(OpKind::kKvAppend, {k_cache, split(1), positions}),
       g.add_node(OpKind::kKvAppend, {v_cache, split(2), positions}), positions},
      OpAttrs{.n_heads = heads, .n_kv_heads = heads, .head_dim = hidden / heads,
              .scale = 1.0f / std::sqrt(static_cast<float>(hidden / heads))});
  const ValueId h = g.add_node(OpKind::kAdd, {x, linear(attn, "c_proj", hidden, hidden)});
  const ValueId up = g.add_node(OpKind::kGeluNew, {linear(layernorm(h, "ln_2"), "c_fc", hidden, 4 * hidden)});
  g.mark_output(g.add_node(OpKind::kAdd, {h, linear(up, "mlp_proj", 4 * hidden, hidden)}));
  HostTensor pos{DType::kI32, {rows}, std::vector<std::byte>(static_cast<size_t>(rows) * 4)};
  for (int64_t i = 0; i < rows; ++i) reinterpret_cast<int32_t*>(pos.bytes.data())[i] = static_cast<int32_t>(i);
  w.io = {random_tensor({rows, hidden}, rng, 1), std::move(pos)};
  w.symbols = {.seq = rows, .past = 0};
  return w;
}

std::vector<TensorView> views_of(std::vector<HostTensor>& tensors) {
  std::vector<TensorView> views;
  for (HostTensor& t : tensors) views.push_back(t.view());
  return views;
}

struct RowResult {
  std::string op;
  int iterations = 0;
  std::vector<double> native_us, warm_us, server_us;
  double cold_us = 0;
  std::vector<double> cold_samples;  // one per fresh server (see --cold-repeats)
  // full_forward: per server, its cold call minus its median warm call (a paired
  // difference: both under the same machine state, where a forward's own jitter on a
  // small VM is milliseconds), whole and in its parts (ForwardParts), and the server's
  // dispatch time (plan lookup or build, binding), cold and warm.
  std::vector<double> cold_minus_warm_paired, cold_minus_warm_compute,
      cold_minus_warm_server_outside_compute, cold_minus_warm_wire, cold_dispatch_us, warm_dispatch_us;
};

// One remote full_forward, µs, in parts that add up to the round trip.
struct ForwardParts {
  double round_trip = 0;
  double compute = 0;                 // the server's kernels (StepTiming::compute_us)
  double server_outside_compute = 0;  // the rest of the server's time: decode, dispatch, reply
  double wire = 0;                    // round trip minus server time: transport and client
  double dispatch = 0;                // within server_outside_compute: plan lookup or build, binding
};

// full_forward on `client`'s server: a fresh session of `model` runs `tokens`.
Result<ForwardParts> remote_forward(Client& client, uint64_t model, const std::vector<int32_t>& tokens) {
  DJINN_ASSIGN_OR_RETURN(RemoteSession s, client.open_session(model, static_cast<int64_t>(tokens.size())));
  const auto start = Clock::now();
  Result<RemoteForwardResult> r = s.forward(tokens);
  const double us = us_since(start);
  DJINN_RETURN_IF_ERROR(s.close());
  DJINN_RETURN_IF_ERROR(r);
  const rpc::StepTiming& t = r->timing;
  return ForwardParts{.round_trip = us,
                      .compute = t.compute_us(),
                      .server_outside_compute = t.server_us() - t.compute_us(),
                      .wire = us - t.server_us(),
                      .dispatch = t.dispatch_us()};
}

constexpr size_t kPairedWarmCalls = 3;

// On `client`'s server, whose first full_forward this is: the cold call, then
// `warm_calls` more, recorded in `row` (cold sample, paired differences, dispatch
// times, and warm round trips and server times when `keep_warm`).
Status cold_then_warm_forwards(Client& client, uint64_t model, const std::vector<int32_t>& tokens, int warm_calls,
                               bool keep_warm, RowResult& row) {
  DJINN_ASSIGN_OR_RETURN(const ForwardParts cold, remote_forward(client, model, tokens));
  row.cold_samples.push_back(cold.round_trip);
  row.cold_dispatch_us.push_back(cold.dispatch);
  std::vector<ForwardParts> warm;
  for (int i = 0; i < warm_calls; ++i) {
    DJINN_ASSIGN_OR_RETURN(const ForwardParts w, remote_forward(client, model, tokens));
    warm.push_back(w);
    row.warm_dispatch_us.push_back(w.dispatch);
    if (keep_warm) {
      row.warm_us.push_back(w.round_trip);
      row.server_us.push_back(w.compute + w.server_outside_compute);
    }
  }
  // Every server's pair takes the median (by round trip) of its first kPairedWarmCalls
  // warm calls: the same count and history on each; the parts of one call, so they add
  // up to the whole.
  const size_t n = std::min(warm.size(), kPairedWarmCalls);
  if (n == 0) return {};
  std::sort(warm.begin(), warm.begin() + static_cast<std::ptrdiff_t>(n),
            [](const ForwardParts& a, const ForwardParts& b) { return a.round_trip < b.round_trip; });
  const ForwardParts& typical = warm[n / 2];
  row.cold_minus_warm_paired.push_back(cold.round_trip - typical.round_trip);
  row.cold_minus_warm_compute.push_back(cold.compute - typical.compute);
  row.cold_minus_warm_server_outside_compute.push_back(cold.server_outside_compute - typical.server_outside_compute);
  row.cold_minus_warm_wire.push_back(cold.wire - typical.wire);
  return {};
}

// The first remote call of a graph workload on a server that has never seen it.
Result<double> cold_graph_call(Client& client, GraphWorkload w) {
  RemoteGraph remote(client, w.graph, views_of(w.resident));
  const std::vector<TensorView> io = views_of(w.io);
  rpc::StepTiming timing;
  const auto start = Clock::now();
  DJINN_RETURN_IF_ERROR(remote.run(io, w.symbols, &timing));
  return us_since(start);
}

Result<RowResult> measure_graph(const std::string& name, GraphWorkload w, Runtime& native, Client& client, int iterations,
                                int client_cpu) {
  RowResult row{name, iterations, {}, {}, {}, 0};
  // Native: all inputs in value-id order, as run_graph takes them.
  std::vector<TensorView> all = views_of(w.resident);
  std::vector<TensorView> io = views_of(w.io);
  std::vector<TensorView> inputs;
  {
    size_t r = 0, i = 0;
    for (const Value& v : w.graph.values()) {
      if (v.producer >= 0) continue;
      inputs.push_back(v.lifetime == LifetimeClass::kIo ? io[i++] : all[r++]);
    }
  }
  DJINN_RETURN_IF_ERROR(native.run_graph(w.graph, inputs, w.symbols));  // warm the native plan too
  for (int i = 0; i < iterations; ++i) {
    const auto start = Clock::now();
    DJINN_RETURN_IF_ERROR(native.run_graph(w.graph, inputs, w.symbols));
    row.native_us.push_back(us_since(start));
  }
  const ScopedCpuPin pin(client_cpu);
  RemoteGraph remote(client, w.graph, all);
  rpc::StepTiming timing;
  auto start = Clock::now();
  DJINN_RETURN_IF_ERROR(remote.run(io, w.symbols, &timing));
  row.cold_us = us_since(start);
  row.cold_samples.push_back(row.cold_us);
  for (int i = 0; i < iterations; ++i) {
    start = Clock::now();
    DJINN_RETURN_IF_ERROR(remote.run(io, w.symbols, &timing));
    row.warm_us.push_back(us_since(start));
    row.server_us.push_back(timing.server_us());
  }
  return row;
}

// full_forward's prompt: `seq` ids of the gpt2 preset's vocabulary, the same every run.
constexpr int64_t kGpt2Vocab = 50257;
std::vector<int32_t> full_forward_tokens(int64_t seq) {
  std::vector<int32_t> tokens(static_cast<size_t>(seq));
  std::mt19937 rng(3);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(kGpt2Vocab));
  return tokens;
}

Result<RowResult> measure_full_forward(Runtime& native, Client& client, int iterations, int64_t seq, int client_cpu) {
  RowResult row{"full_forward", iterations, {}, {}, {}, 0};
  DJINN_ASSIGN_OR_RETURN(ModelId model, native.load_model("gpt2"));
  const auto config = (*native.model(model))->config();
  const std::vector<int32_t> tokens = full_forward_tokens(seq);
  if (config.vocab_size < kGpt2Vocab) return internal_error("the gpt2 preset's vocabulary shrank");
  auto native_forward = [&]() -> Result<double> {
    DJINN_ASSIGN_OR_RETURN(SessionId s, native.open_session(model, seq));
    const auto start = Clock::now();
    Result<ForwardResult> r = native.forward(s, tokens);
    const double us = us_since(start);
    DJINN_RETURN_IF_ERROR(native.close_session(s));
    DJINN_RETURN_IF_ERROR(r);
    return us;
  };
  DJINN_RETURN_IF_ERROR(native_forward());  // warm
  for (int i = 0; i < iterations; ++i) {
    DJINN_ASSIGN_OR_RETURN(double us, native_forward());
    row.native_us.push_back(us);
  }
  const ScopedCpuPin pin(client_cpu);
  DJINN_ASSIGN_OR_RETURN(rpc::LoadModelReply loaded, client.load_model("gpt2"));
  DJINN_RETURN_IF_ERROR(cold_then_warm_forwards(client, loaded.model_id(), tokens, iterations, /*keep_warm=*/true, row));
  return row;
}

}  // namespace

Status zmq_echo(const ZmqEchoOptions& options) {
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);  // never outlives the bench that started it
  if (options.pin_cpu >= 0 && !pin_current_thread(options.pin_cpu))
    return invalid_argument(fmt::format("zmq-echo: cannot pin to CPU {}", options.pin_cpu));
  zmq::context_t context(1);
  if (options.pin_cpu >= 0) context.set(zmq::ctxopt::thread_affinity_cpu_add, options.pin_cpu);
  zmq::socket_t router(context, zmq::socket_type::router);
  router.set(zmq::sockopt::linger, 0);
  router.bind(options.address);
  for (;;) {  // until SIGTERM
    zmq::message_t identity, payload;
    if (!router.recv(identity) || !router.recv(payload)) continue;
    router.send(identity, zmq::send_flags::sndmore);
    router.send(payload, zmq::send_flags::none);
  }
}

Status bench_os_tax(const OsTaxOptions& options) {
  if (options.transport != "tcp" && options.transport != "ipc")
    return invalid_argument(fmt::format("--listen must be tcp or ipc, not '{}'", options.transport));
  const bool tcp = options.transport == "tcp";
  // The floor is measured before and after the remote rows, so that a machine whose
  // state drifts during the run shows it (floor_before / floor_after in the JSON).
  // With --pin-cpu C the server's request path sits on CPU C and this process
  // (client thread and its I/O thread) on another; the floor's and the ZeroMQ echo's two
  // ends sit the same way, so they and the remote calls pay the same kind of wake-ups.
  // The hand-off probe puts its two threads on CPU C, where the server's hand-offs happen.
  // Only these run pinned (ScopedCpuPin): native runs keep every CPU, or OpenBLAS's and
  // the compute pool's workers would crowd onto one.
  if (options.pin_cpu >= 0 && !is_startup_cpu(options.pin_cpu))
    return invalid_argument(fmt::format("--pin-cpu {} is not one of the CPUs this process may use", options.pin_cpu));
  if (options.pin_cpu >= 0 && startup_cpu_count() < 2) return invalid_argument("--pin-cpu needs two CPUs or more");
  const int client_cpu =
      options.pin_cpu < 0 ? -1 : (startup_cpu(0) == options.pin_cpu ? startup_cpu(1) : startup_cpu(0));
  auto floor_pinned = [&]() {
    const ScopedCpuPin pin(client_cpu);
    return ping_pong_floor(tcp, options.small_iterations, options.pin_cpu);
  };
  DJINN_ASSIGN_OR_RETURN(std::vector<double> floor_before, floor_pinned());
  const std::string echo_address =
      tcp ? free_tcp_address() : fmt::format("ipc:///tmp/djinn-os-tax-echo-{}.ipc", ::getpid());
  DJINN_ASSIGN_OR_RETURN(std::vector<double> zmq_echo_us,
                         zmq_echo_round_trips(echo_address, options.small_iterations, options.pin_cpu, client_cpu));

  DJINN_ASSIGN_OR_RETURN(const std::vector<double> handoff_round_trips,
                         same_cpu_handoff_round_trips(options.pin_cpu, options.small_iterations));
  const double handoff_us = percentile(handoff_round_trips, 50) / 2;

  const std::string address = tcp ? free_tcp_address() : fmt::format("ipc:///tmp/djinn-os-tax-{}.ipc", ::getpid());
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<ChildProcess> server, start_server(address, options));
  ClientOptions client_options;
  client_options.name = "djinn bench os-tax";
  client_options.timeout_s = 60;
  client_options.busy_poll_us = options.client_busy_poll_us;
  client_options.io_cpu = client_cpu;
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<Client> client, Client::connect(address, client_options));
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<Runtime> native, Runtime::create(native_runtime_options(options)));

  // What each side's VMU was given, as the runtimes report it (the same, by design).
  auto vmu_sizes = [](const nlohmann::json& vmu) {
    return nlohmann::json{{"device_bytes", vmu["capacity"]}, {"host_swap_pool_bytes", vmu["host_pool"]["capacity"]}};
  };
  DJINN_ASSIGN_OR_RETURN(const nlohmann::json server_stats, client->stats());
  const nlohmann::json runtimes = {{"native", vmu_sizes(native->stats_json()["vmu"])},
                                   {"server", vmu_sizes(server_stats["vmu"])}};

  // The protocol's own round trip: a Hello (decode, reply, no execution).
  std::vector<double> hello_us;
  {
    const ScopedCpuPin pin(client_cpu);
    for (int i = 0; i < options.small_iterations; ++i) {
      rpc::Request hello;
      hello.mutable_hello()->set_protocol_version(rpc::kProtocolVersion);
      const auto start = Clock::now();
      DJINN_RETURN_IF_ERROR(client->call(hello));
      hello_us.push_back(us_since(start));
    }
  }
  std::vector<RowResult> rows;
  DJINN_ASSIGN_OR_RETURN(RowResult add, measure_graph("micro_add", micro_add(), *native, *client, options.small_iterations, client_cpu));
  rows.push_back(std::move(add));
  if (!options.quick) {
    DJINN_ASSIGN_OR_RETURN(RowResult layer, measure_graph("layer", transformer_layer(512, 512, 8), *native, *client,
                                                          options.large_iterations, client_cpu));
    rows.push_back(std::move(layer));
    DJINN_ASSIGN_OR_RETURN(RowResult forward, measure_full_forward(*native, *client, options.large_iterations, 128, client_cpu));
    rows.push_back(std::move(forward));
  }

  // More cold samples, each on a fresh server (one cold call per row): a single cold
  // call against a warm p50 that jitters by milliseconds says little.
  for (int repeat = 1; repeat < options.cold_repeats; ++repeat) {
    const std::string fresh_address =
        tcp ? free_tcp_address() : fmt::format("ipc:///tmp/djinn-os-tax-{}-{}.ipc", ::getpid(), repeat);
    DJINN_ASSIGN_OR_RETURN(std::unique_ptr<ChildProcess> fresh,
                           start_server(fresh_address, options));
    DJINN_ASSIGN_OR_RETURN(std::unique_ptr<Client> fresh_client, Client::connect(fresh_address, client_options));
    const ScopedCpuPin pin(client_cpu);
    DJINN_ASSIGN_OR_RETURN(double add_cold, cold_graph_call(*fresh_client, micro_add()));
    rows[0].cold_samples.push_back(add_cold);
    if (!options.quick) {
      DJINN_ASSIGN_OR_RETURN(double layer_cold, cold_graph_call(*fresh_client, transformer_layer(512, 512, 8)));
      rows[1].cold_samples.push_back(layer_cold);
      DJINN_ASSIGN_OR_RETURN(rpc::LoadModelReply loaded, fresh_client->load_model("gpt2"));
      DJINN_RETURN_IF_ERROR(cold_then_warm_forwards(*fresh_client, loaded.model_id(), full_forward_tokens(128),
                                                    static_cast<int>(kPairedWarmCalls), /*keep_warm=*/false, rows[2]));
    }
  }
  for (RowResult& r : rows) r.cold_us = percentile(r.cold_samples, 50);

  DJINN_ASSIGN_OR_RETURN(std::vector<double> floor_after, floor_pinned());
  std::vector<double> floor = floor_before;
  floor.insert(floor.end(), floor_after.begin(), floor_after.end());
  const double floor_p50 = percentile(floor, 50);
  nlohmann::json out = {{"benchmark", "os-tax"},
                        {"machine", machine_json(options.device == "cuda")},
                        {"device", options.device},
                        {"transport", options.transport},
                        {"busy_poll_us", options.busy_poll_us},
                        {"client_busy_poll_us", options.client_busy_poll_us},
                        {"hello_us_p50", percentile(hello_us, 50)},
                        {"floor_us_p50", floor_p50},
                        {"floor_us_p99", percentile(floor, 99)},
                        {"floor_before_us_p50", percentile(floor_before, 50)},
                        {"floor_after_us_p50", percentile(floor_after, 50)},
                        {"floor", "64-byte ping-pong between this process and a forked echo process"},
                        {"zmq_echo_us_p50", percentile(zmq_echo_us, 50)},
                        {"zmq_echo", "64-byte DEALER -> ROUTER echo process, pinned like the server and the client; "
                                     "it blocks (no busy-poll) whatever --busy-poll-us says"},
                        {"same_cpu_handoff_us_p50", handoff_us},
                        {"same_cpu_handoff", "one thread waking another on the server's CPU (--pin-cpu; no pinning "
                                             "at -1) through an eventfd, "
                                             "half a ping-pong's round trip: ZeroMQ adds four of these per round "
                                             "trip (client and server, application thread <-> I/O thread, each "
                                             "way) to the floor's path"},
                        {"pin_cpu", options.pin_cpu},
                        {"client_cpu", client_cpu},
                        {"server", fmt::format("separate djinn serve process, {}", options.device)},
                        {"server_args", server_args("ADDRESS", options)},
                        {"runtimes", runtimes},
                        {"rows", nlohmann::json::array()}};
  for (const RowResult& r : rows) {
    const double native_p50 = percentile(r.native_us, 50), warm_p50 = percentile(r.warm_us, 50);
    out["rows"].push_back({{"op", r.op},
                           {"iterations", r.iterations},
                           {"native_us_p50", native_p50},
                           {"cold_us", r.cold_us},
                           {"cold_us_samples", r.cold_samples},
                           {"warm_us_p50", warm_p50},
                           {"warm_us_p99", percentile(r.warm_us, 99)},
                           {"server_us_p50", percentile(r.server_us, 50)},
                           {"overhead_us_p50", warm_p50 - native_p50},
                           {"overhead_pct", native_p50 > 0 ? 100.0 * (warm_p50 - native_p50) / native_p50 : 0.0},
                           {"overhead_over_floor", floor_p50 > 0 ? (warm_p50 - native_p50) / floor_p50 : 0.0},
                           {"cold_minus_warm_us", r.cold_us - warm_p50},
                           {"samples", {{"native_us", r.native_us}, {"warm_us", r.warm_us}}}});
    if (r.cold_minus_warm_paired.empty()) continue;
    nlohmann::json& row = out["rows"].back();
    row["cold_minus_warm_paired_us"] = percentile(r.cold_minus_warm_paired, 50);
    row["cold_minus_warm_paired_samples"] = r.cold_minus_warm_paired;
    const auto [ci_low, ci_high] = median_ci95(r.cold_minus_warm_paired);
    row["cold_minus_warm_paired_ci95_us"] = {ci_low, ci_high};
    std::vector<double> outside_compute;  // what the cold call adds besides the forward itself
    for (size_t i = 0; i < r.cold_minus_warm_wire.size(); ++i)
      outside_compute.push_back(r.cold_minus_warm_server_outside_compute[i] + r.cold_minus_warm_wire[i]);
    row["cold_minus_warm_outside_compute_us"] = percentile(outside_compute, 50);
    row["cold_minus_warm_outside_compute_samples"] = outside_compute;
    // The parts, per server: compute + server outside compute + wire = the whole.
    row["cold_minus_warm_parts_samples"] = {{"compute", r.cold_minus_warm_compute},
                                            {"server_outside_compute", r.cold_minus_warm_server_outside_compute},
                                            {"wire", r.cold_minus_warm_wire}};
    row["cold_dispatch_us"] = percentile(r.cold_dispatch_us, 50);
    row["warm_dispatch_us_p50"] = percentile(r.warm_dispatch_us, 50);
  }
  if (options.json) {
    std::cout << out.dump(2) << '\n';
    return {};
  }
  fmt::print("bench os-tax over {} ({}), busy-poll {} / {} us (server / client): floor (64-byte ping-pong) p50 {:.1f} "
             "us, bare ZeroMQ echo p50 {:.1f} us ({:.2f} x floor; it adds 4 same-CPU hand-offs, p50 {:.1f} us each), "
             "Hello round trip p50 {:.1f} us\n",
             options.transport, machine_info().cpu_model, options.busy_poll_us, options.client_busy_poll_us, floor_p50,
             percentile(zmq_echo_us, 50), floor_p50 > 0 ? percentile(zmq_echo_us, 50) / floor_p50 : 0.0, handoff_us,
             percentile(hello_us, 50));
  fmt::print("  {:<13} {:>12} {:>12} {:>12} {:>12} {:>12} {:>9}\n", "op", "native p50", "cold", "warm p50", "warm p99",
             "overhead", "x floor");
  for (const nlohmann::json& r : out["rows"])
    fmt::print("  {:<13} {:>9.1f} us {:>9.1f} us {:>9.1f} us {:>9.1f} us {:>9.1f} us {:>9.2f}\n", r["op"].get<std::string>(),
               r["native_us_p50"].get<double>(), r["cold_us"].get<double>(), r["warm_us_p50"].get<double>(),
               r["warm_us_p99"].get<double>(), r["overhead_us_p50"].get<double>(), r["overhead_over_floor"].get<double>());
  for (const nlohmann::json& r : out["rows"])
    if (r.contains("cold_minus_warm_paired_us"))
      fmt::print("  {}: cold minus warm on the same server, median of {} servers: {:.1f} us (95 % CI {:.1f} .. {:.1f}; "
                 "{:.1f} us outside the server's compute); server dispatch cold {:.1f} us, warm {:.1f} us\n",
                 r["op"].get<std::string>(), r["cold_minus_warm_paired_samples"].size(),
                 r["cold_minus_warm_paired_us"].get<double>(), r["cold_minus_warm_paired_ci95_us"][0].get<double>(),
                 r["cold_minus_warm_paired_ci95_us"][1].get<double>(),
                 r["cold_minus_warm_outside_compute_us"].get<double>(), r["cold_dispatch_us"].get<double>(),
                 r["warm_dispatch_us_p50"].get<double>());
  return {};
}

}  // namespace djinn::cli
