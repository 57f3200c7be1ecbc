// `djinn serve`: run the server until SIGINT / SIGTERM, then drain and exit cleanly.
#include <spdlog/spdlog.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <malloc.h>

#include "djinn/backend/cpu/compute_pool.h"
#include "djinn/cli/commands.h"
#include "djinn/core/cpu_affinity.h"
#include "djinn/rpc/server.h"

namespace djinn::cli {
namespace {

std::atomic<rpc::Server*> g_serving{nullptr};

void on_signal(int) {
  if (rpc::Server* server = g_serving.load()) server->stop();  // an atomic store: async-signal-safe
}

struct ServeOptions {
  rpc::ServerOptions server;
  std::string device = "cpu";
  bool lazy_kernels = false;
};

// Note [A warm heap]: a fresh server's first requests allocate heap memory that was
// never touched, and every first touch of a page is a page fault: on the 2-core VM a
// gpt2 forward's 200 KB of logits alone took 0.7-1.0 ms more in a fresh server (~50
// faults) than later, and a first full_forward 2.2 ms more outside its compute. So
// the heap keeps what it has grown (no trimming below 4 x kWarmHeapBytes, no mmap for
// blocks under kWarmHeapBytes) and starts with a block just under kWarmHeapBytes
// touched once (about 0.1 s at start). The settings are the process's, for every
// thread's arena; the scheduler thread (this one) allocates from the main arena.
constexpr size_t kWarmHeapBytes = size_t{64} << 20;
static_assert(4 * kWarmHeapBytes <= static_cast<size_t>(std::numeric_limits<int>::max()), "mallopt takes an int");
void warm_the_heap() {
  if (::mallopt(M_MMAP_THRESHOLD, static_cast<int>(kWarmHeapBytes)) != 1 ||
      ::mallopt(M_TRIM_THRESHOLD, static_cast<int>(4 * kWarmHeapBytes)) != 1) {
    spdlog::warn("djinn serve: malloc refused the warm-heap settings; first requests may page-fault");
    return;
  }
  const size_t bytes = kWarmHeapBytes - (size_t{64} << 10);  // under the mmap threshold, header included
  void* block = std::malloc(bytes);
  if (block == nullptr) return;
  std::memset(block, 0, bytes);
  std::free(block);  // stays in the heap (under the trim threshold), its pages mapped
}

Status serve(ServeOptions options) {
  options.server.runtime.device = options.device == "cuda" ? DeviceKind::kCuda : DeviceKind::kCpu;
  warm_the_heap();
  // A server loads every GPU kernel when it starts (before the CUDA runtime does
  // anything, so here). CUDA's default loads a kernel on its first launch: measured on
  // an H100, a fresh server's first gpt2 forward of 128 tokens then took 6.6 ms more
  // than later ones, against 0.9 ms when loaded eagerly, which costs ~2.7 s at start.
  // A CUDA_MODULE_LOADING already in the environment is kept, unless --lazy-kernels.
  if (options.server.runtime.device == DeviceKind::kCuda)
    ::setenv("CUDA_MODULE_LOADING", options.lazy_kernels ? "LAZY" : "EAGER", /*overwrite=*/options.lazy_kernels);
  spdlog::set_level(spdlog::level::info);
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<rpc::Server> server, rpc::Server::create(options.server));
  // The CPU backend's GEMM buffers, touched now rather than by the first requests.
  if (options.server.runtime.device == DeviceKind::kCpu) cpu::ComputePool::instance().warm_gemm_buffers();
  g_serving.store(server.get());
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  spdlog::info("{}", server->describe());
  const Status status = server->serve();
  g_serving.store(nullptr);
  return status;
}

}  // namespace

Command add_serve_command(CLI::App& app) {
  auto options = std::make_shared<ServeOptions>();
  rpc::ServerOptions& s = options->server;
  s.runtime.host_pool_gb = 1.0;  // swap space by default; reserved at start, made ready in the background
  s.runtime.host_pool_background = true;
  s.admission_timeout_s = 10;    // a new session waits this long for an arena
  s.runtime.reserve_prefill_tokens = 512;  // first prompts find their activation memory ready
  CLI::App* command = app.add_subcommand("serve", "Serve sessions over ZeroMQ until SIGINT / SIGTERM");
  command->add_option("--listen", s.listen, "tcp://host:port, ipc://path or inproc://name (repeatable)");
  command->add_option("--device", options->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  command->add_flag("--lazy-kernels", options->lazy_kernels,
                    "cuda: load each GPU kernel on its first use, as CUDA does by default (starts ~3 s sooner; a "
                    "request's first use of a kernel waits for it). Default: all at start");
  command->add_option("--device-mem-gb", s.runtime.device_mem_gb, "cap on the device memory the VMU manages, GiB")
      ->check(CLI::PositiveNumber);
  command->add_option("--arena-mb", s.runtime.arena_mb, "session arena size, MiB")->check(CLI::PositiveNumber);
  command->add_option("--reserve-prefill-tokens", s.runtime.reserve_prefill_tokens,
                      "when a model loads, reserve activation memory for a prompt of this many tokens (default 512; 0: "
                      "grow on first use)")
      ->check(CLI::NonNegativeNumber);
  command->add_option("--host-swap-pool-gb", s.runtime.host_pool_gb, "host memory reserved for swapped sessions, GiB (default 1)")
      ->check(CLI::NonNegativeNumber);
  command->add_option("--policy", s.policy, "proactive, reactive, none or lru")
      ->check(CLI::IsMember({"proactive", "reactive", "none", "lru"}));
  command->add_option("--idle-timeout-s", s.idle_timeout_s, "reactive policy: idle time before a swap-out")
      ->check(CLI::PositiveNumber);
  command->add_option("--session-lease-s", s.session_lease_s, "close sessions not heard from for this long")
      ->check(CLI::PositiveNumber);
  command->add_option("--max-request-mb", s.max_request_mb, "refuse larger requests")->check(CLI::PositiveNumber);
  command->add_option("--admission-timeout-s", s.admission_timeout_s,
                      "a new session waits this long for an arena, then fails with out-of-memory (default 10)")
      ->check(CLI::NonNegativeNumber);
  s.pin_cpu = default_request_path_cpu();
  command->add_option("--pin-cpu", s.pin_cpu,
                      "pin the request path (ZeroMQ I/O and scheduler threads) to this CPU; -1: no pinning "
                      "(default: the last CPU when there are two or more)")
      ->check(CLI::Range(-1, 4095));
  command->add_option("--busy-poll-us", s.busy_poll_us,
                      "spin this long for the next request before sleeping, while no generation runs (0: never)")
      ->check(CLI::Range(0, 1000000))
      ->capture_default_str();
  return {command, [options] { return serve(*options); }};
}

}  // namespace djinn::cli
