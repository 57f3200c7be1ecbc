// `djinn bench`: programs that print numbers. Each benchmark measures its baseline in
// the same run where it has one; nothing here asserts a timing.
//   decode      prefill time and greedy decode throughput (bench_decode.h)
//   plan-cache  decode dispatch (plan lookup or build + pointer binding) with the
//               plan cache on, then off (cleared before every token)
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>

#include "djinn/core/cpu_affinity.h"
#include "djinn/cli/bench_decode.h"
#include "djinn/cli/bench_os_tax.h"
#include "djinn/cli/bench_stats.h"
#include "djinn/cli/bench_swap.h"
#include "djinn/cli/commands.h"
#include "djinn/cli/model_options.h"
#include "djinn/core/machine_info.h"
#include "djinn/exec/inference_session.h"

namespace djinn::cli {
namespace {

struct PlanCacheBenchOptions {
  ModelOptions model;
  int64_t prompt_len = 32;
  int64_t n_tokens = 100;
  bool json = false;
};


// One decode loop of n_tokens on a fresh session; with clear_each_token the plan
// cache is emptied before every token (the original study's "cache off").
Result<nlohmann::json> decode_loop(LoadedModel& loaded, const PlanCacheBenchOptions& options, bool clear_each_token,
                                   std::vector<double>& miss_build_us) {
  Runtime& runtime = *loaded.runtime;
  const std::vector<int32_t> prompt = random_token_ids(options.prompt_len, loaded.model->config().vocab_size, options.model.seed);
  DJINN_ASSIGN_OR_RETURN(SessionId session, runtime.open_session(loaded.id, options.prompt_len + options.n_tokens));
  DJINN_ASSIGN_OR_RETURN(ForwardResult prefill, runtime.forward(session, prompt));
  runtime.plan_cache().reset_stats();
  std::vector<double> dispatch_us, hit_dispatch_us, token_ms;
  int32_t token = prefill.next_token;
  for (int64_t i = 0; i < options.n_tokens; ++i) {
    if (clear_each_token) runtime.plan_cache().clear();
    const double build_before = runtime.plan_cache().stats().build_us_total;
    const uint64_t misses_before = runtime.plan_cache().stats().misses;
    const auto start = std::chrono::steady_clock::now();
    DJINN_ASSIGN_OR_RETURN(ForwardResult step, runtime.forward(session, std::span<const int32_t>(&token, 1)));
    token_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    dispatch_us.push_back(step.dispatch_us);
    const PlanCacheStats after = runtime.plan_cache().stats();
    if (after.misses > misses_before)
      miss_build_us.push_back(after.build_us_total - build_before);
    else
      hit_dispatch_us.push_back(step.dispatch_us);
    token = step.next_token;
  }
  const PlanCacheStats stats = runtime.plan_cache().stats();
  DJINN_RETURN_IF_ERROR(runtime.close_session(session));
  return nlohmann::json{{"hit_rate", stats.hit_rate()},
                        {"hits", stats.hits},
                        {"misses", stats.misses},
                        {"dispatch_us_mean", mean(dispatch_us)},
                        {"hit_dispatch_us_mean", mean(hit_dispatch_us)},
                        {"dispatch_us_p50", percentile(dispatch_us, 50)},
                        {"dispatch_us_p99", percentile(dispatch_us, 99)},
                        {"token_ms_p50", percentile(token_ms, 50)},
                        {"token_ms_p99", percentile(token_ms, 99)},
                        {"samples", {{"dispatch_us", dispatch_us}, {"token_ms", token_ms}}}};
}

Status bench_plan_cache(const PlanCacheBenchOptions& options) {
  DJINN_ASSIGN_OR_RETURN(LoadedModel loaded, load_model(options.model));
  const ModelConfig& config = loaded.model->config();
  if (options.prompt_len + options.n_tokens > config.max_positions)
    return out_of_range(fmt::format("prompt {} + tokens {} exceeds the model's context {}", options.prompt_len,
                                    options.n_tokens, config.max_positions));
  std::vector<double> on_builds, off_builds;
  DJINN_ASSIGN_OR_RETURN(nlohmann::json cache_on, decode_loop(loaded, options, /*clear_each_token=*/false, on_builds));
  DJINN_ASSIGN_OR_RETURN(nlohmann::json cache_off, decode_loop(loaded, options, /*clear_each_token=*/true, off_builds));
  nlohmann::json out = {{"benchmark", "plan-cache"},
                        {"machine", to_json(machine_info())},
                        {"device", device_name(loaded.runtime->backend().device())},
                        {"model", config.name},
                        {"dtype", dtype_name(loaded.model->dtype())},
                        {"prompt_len", options.prompt_len},
                        {"n_tokens", options.n_tokens},
                        {"cache_on", cache_on},
                        {"cache_off", cache_off},
                        {"miss_build_us_mean", mean(off_builds)},
                        {"miss_build_us_p99", percentile(off_builds, 99)}};
  if (options.json) {
    std::cout << out.dump(2) << '\n';
    return {};
  }
  fmt::print("bench plan-cache: {} decode, {} tokens after a {}-token prompt, on {} ({})\n", config.name,
             options.n_tokens, options.prompt_len, device_name(loaded.runtime->backend().device()), machine_info().cpu_model);
  for (const auto& [name, r] : {std::pair<const char*, const nlohmann::json&>{"cache on ", cache_on}, {"cache off", cache_off}})
    fmt::print("  {}: hit rate {:5.1f} %  dispatch mean {:8.2f} us (hits only {:6.2f})  p99 {:8.2f} us  token p50 {:.3f} ms  p99 {:.3f} ms\n",
               name, 100.0 * r["hit_rate"].get<double>(), r["dispatch_us_mean"].get<double>(), r["hit_dispatch_us_mean"].get<double>(),
               r["dispatch_us_p99"].get<double>(), r["token_ms_p50"].get<double>(), r["token_ms_p99"].get<double>());
  fmt::print("  a miss (meta-simulation + plan of the decode graph): {:.1f} us mean\n", mean(off_builds));
  return {};
}

struct BatchBenchOptions {
  ModelOptions model;
  int64_t sessions = 16;
  int64_t prompt_len = 32;
  int64_t steps = 20;
  bool json = false;
};

// One session's decode step against one batched step of N sessions, same run.
Status bench_batch(const BatchBenchOptions& options) {
  DJINN_ASSIGN_OR_RETURN(LoadedModel loaded, load_model(options.model));
  Runtime& runtime = *loaded.runtime;
  const ModelConfig& config = loaded.model->config();
  const int64_t context = options.prompt_len + options.steps + 2;
  if (context > config.max_positions) return out_of_range("prompt + steps exceed the model's context");
  std::vector<SessionId> sessions;
  std::vector<int32_t> next;
  for (int64_t i = 0; i <= options.sessions; ++i) {  // session 0 runs alone, 1..N batched
    DJINN_ASSIGN_OR_RETURN(SessionId s, runtime.open_session(loaded.id, context));
    // Ragged lengths: session i's prompt is a little shorter than the one before.
    const int64_t len = std::max<int64_t>(1, options.prompt_len - i);
    DJINN_ASSIGN_OR_RETURN(ForwardResult r, runtime.forward(s, random_token_ids(len, config.vocab_size, options.model.seed + static_cast<uint64_t>(i))));
    sessions.push_back(s);
    next.push_back(r.next_token);
  }
  std::vector<double> single_ms, batch_ms;
  auto ms_since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
  };
  // Warm both plans, then alternate so noise hits both alike.
  DJINN_RETURN_IF_ERROR(runtime.forward(sessions[0], std::span(&next[0], 1)));
  DJINN_RETURN_IF_ERROR(runtime.decode_batch(std::span(sessions).subspan(1), std::span(next).subspan(1)));
  for (int64_t step = 0; step + 2 < options.steps; ++step) {
    auto start = std::chrono::steady_clock::now();
    DJINN_ASSIGN_OR_RETURN(ForwardResult one, runtime.forward(sessions[0], std::span(&next[0], 1)));
    single_ms.push_back(ms_since(start));
    next[0] = one.next_token;
    start = std::chrono::steady_clock::now();
    DJINN_ASSIGN_OR_RETURN(std::vector<ForwardResult> many, runtime.decode_batch(std::span(sessions).subspan(1), std::span(next).subspan(1)));
    batch_ms.push_back(ms_since(start));
    for (size_t i = 0; i < many.size(); ++i) next[i + 1] = many[i].next_token;
  }
  const int64_t batch = options.sessions;
  const double single = percentile(single_ms, 50), batched = percentile(batch_ms, 50);
  nlohmann::json out = {{"benchmark", "batch"},
                        {"machine", to_json(machine_info())},
                        {"device", device_name(runtime.backend().device())},
                        {"model", config.name},
                        {"batch", batch},
                        {"single_step_ms_p50", single},
                        {"batch_step_ms_p50", batched},
                        {"batch_over_single", batched / single},
                        {"tokens_per_s_single", 1e3 / single},
                        {"tokens_per_s_batch", 1e3 * static_cast<double>(batch) / batched},
                        {"samples", {{"single_ms", single_ms}, {"batch_ms", batch_ms}}}};
  if (options.json) {
    std::cout << out.dump(2) << '\n';
    return {};
  }
  fmt::print("bench batch: {} on {} ({}): one session {:.2f} ms/step, {} sessions batched {:.2f} ms/step = {:.2f}x "
             "({:.0f} vs {:.0f} tokens/s)\n",
             config.name, device_name(runtime.backend().device()), machine_info().cpu_model, single, batch, batched,
             batched / single, 1e3 / single, 1e3 * static_cast<double>(batch) / batched);
  return {};
}

}  // namespace

Command add_bench_command(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks that print numbers");
  bench->require_subcommand(1);
  auto decode = std::make_shared<DecodeBenchOptions>();
  CLI::App* decode_cmd = bench->add_subcommand("decode", "Prefill time and decode tokens/s of one session");
  add_model_options(*decode_cmd, decode->model);
  decode_cmd->add_option("--prompt-len", decode->prompt_len, "prompt tokens (default 128)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  decode_cmd->add_option("--n-tokens", decode->n_tokens, "decode steps per repeat (default 64)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  decode_cmd->add_option("--repeats", decode->repeats, "measured repeats after one warm-up (default 3)")
      ->check(CLI::Range(int64_t{1}, int64_t{1000}));
  decode_cmd->add_option("--batches", decode->batches,
                         "also time batched decode steps of this many sessions at the same context (e.g. 8,16)")
      ->delimiter(',')
      ->check(CLI::Range(int64_t{2}, int64_t{1024}));
  decode_cmd->add_flag("--swap-during", decode->swap_during,
                       "also time decode steps while another session swaps out and in (needs --host-swap-pool-gb)");
  decode_cmd->add_option("--host-swap-pool-gb", decode->model.host_pool_gb, "host memory reserved for swaps, GiB")
      ->check(CLI::NonNegativeNumber);
  decode_cmd->add_flag("--json", decode->json, "print JSON");
  auto plans = std::make_shared<PlanCacheBenchOptions>();
  CLI::App* plans_cmd = bench->add_subcommand("plan-cache", "Decode dispatch cost with the plan cache on and off");
  add_model_options(*plans_cmd, plans->model);
  plans_cmd->add_option("--prompt-len", plans->prompt_len, "prompt tokens (default 32)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  plans_cmd->add_option("--n-tokens", plans->n_tokens, "decode steps per loop (default 100)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  plans_cmd->add_flag("--json", plans->json, "print JSON");
  auto os_tax = std::make_shared<OsTaxOptions>();
  CLI::App* os_tax_cmd = bench->add_subcommand("os-tax", "Remote vs in-process execution, beside a plain-socket floor");
  os_tax_cmd->add_option("--listen", os_tax->transport, "tcp or ipc")->check(CLI::IsMember({"tcp", "ipc"}));
  os_tax_cmd->add_option("--iterations", os_tax->small_iterations, "micro_add and floor iterations (default 2000)")
      ->check(CLI::Range(10, 1000000));
  os_tax_cmd->add_option("--large-iterations", os_tax->large_iterations, "layer and full_forward iterations (default 10)")
      ->check(CLI::Range(1, 100000));
  os_tax_cmd->add_flag("--quick", os_tax->quick, "micro_add only");
  os_tax_cmd->add_option("--device", os_tax->device, "cpu or cuda (native runtime and server)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  os_tax->pin_cpu = default_request_path_cpu();
  os_tax_cmd->add_option("--pin-cpu", os_tax->pin_cpu,
                         "the server's --pin-cpu; this process and the floor's client end take another CPU "
                         "(default: the last CPU when there are two or more; -1: no pinning)")
      ->check(CLI::Range(-1, 4095));
  os_tax_cmd->add_option("--cold-repeats", os_tax->cold_repeats,
                         "fresh servers timing a first call each; cold_us is their median (default 25)")
      ->check(CLI::Range(1, 100));
  os_tax_cmd->add_option("--busy-poll-us", os_tax->busy_poll_us,
                         "the server's busy-poll window, us (default: djinn serve's; 0: block at once)")
      ->check(CLI::Range(0, 1000000))
      ->capture_default_str();
  os_tax_cmd->add_option("--client-busy-poll-us", os_tax->client_busy_poll_us,
                         "the client's busy-poll window, us (default: the client library's; 0: block at once)")
      ->check(CLI::Range(0, 1000000))
      ->capture_default_str();
  os_tax_cmd->add_option("--host-swap-pool-gb", os_tax->host_swap_pool_gb,
                         "swap space of both runtimes, native and server, GiB (os-tax never swaps)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  os_tax_cmd->add_flag("--json", os_tax->json, "print JSON");
  auto echo = std::make_shared<ZmqEchoOptions>();
  CLI::App* echo_cmd = bench->add_subcommand("zmq-echo", "A bare ZeroMQ echo (bench os-tax's reference)");
  echo_cmd->group("");  // internal: not listed in --help
  echo_cmd->add_option("--listen", echo->address, "address to bind")->required();
  echo_cmd->add_option("--pin-cpu", echo->pin_cpu, "CPU of the echo and its I/O thread (-1: none)")
      ->check(CLI::Range(-1, 4095));
  auto batch = std::make_shared<BatchBenchOptions>();
  CLI::App* batch_cmd = bench->add_subcommand("batch", "One session's decode step vs one batched step of N sessions");
  add_model_options(*batch_cmd, batch->model);
  batch_cmd->add_option("--sessions", batch->sessions, "sessions decoded together (default 16); one more runs alone as the baseline")
      ->check(CLI::Range(int64_t{1}, int64_t{1024}));
  batch_cmd->add_option("--steps", batch->steps, "decode steps (default 20)")->check(CLI::Range(int64_t{3}, int64_t{100000}));
  batch_cmd->add_option("--prompt-len", batch->prompt_len, "longest prompt (default 32)")->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  batch_cmd->add_flag("--json", batch->json, "print JSON");
  auto swap = std::make_shared<SwapBenchOptions>();
  CLI::App* swap_cmd = bench->add_subcommand("swap", "Swap throughput beside raw copy throughput, 1 MiB to 1 GiB");
  swap_cmd->add_option("--max-mb", swap->max_mb, "largest session size, MiB (default 1024)")->check(CLI::Range(1, 65536));
  swap_cmd->add_flag("--json", swap->json, "print JSON");
  swap_cmd->add_option("--device", swap->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  return {bench, [decode_cmd, decode, plans_cmd, plans, os_tax_cmd, os_tax, swap_cmd, swap, batch_cmd, batch, echo_cmd,
                  echo]() -> Status {
            if (echo_cmd->parsed()) return zmq_echo(*echo);
            if (batch_cmd->parsed()) return bench_batch(*batch);
            if (swap_cmd->parsed()) return bench_swap(*swap);
            if (decode_cmd->parsed()) return bench_decode(*decode);
            if (plans_cmd->parsed()) return bench_plan_cache(*plans);
            if (os_tax_cmd->parsed()) return bench_os_tax(*os_tax);
            return invalid_argument("unknown benchmark");
          }};
}

}  // namespace djinn::cli
