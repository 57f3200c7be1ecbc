// `djinn bench`: programs that print numbers. Each benchmark measures its baseline in
// the same run where it has one; nothing here asserts a timing.
//   decode  prefill time and greedy decode throughput of one model on one session
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>

#include "djinn/cli/commands.h"
#include "djinn/cli/model_options.h"
#include "djinn/core/machine_info.h"
#include "djinn/exec/inference_session.h"

namespace djinn::cli {
namespace {

struct DecodeBenchOptions {
  ModelOptions model;
  int64_t prompt_len = 128;
  int64_t n_tokens = 64;
  int64_t repeats = 3;
  bool json = false;
};

double percentile(std::vector<double> samples, double p) {
  if (samples.empty()) return 0.0;
  std::sort(samples.begin(), samples.end());
  const auto index = static_cast<size_t>(p / 100.0 * static_cast<double>(samples.size() - 1) + 0.5);
  return samples[std::min(index, samples.size() - 1)];
}

Status bench_decode(const DecodeBenchOptions& options) {
  DJINN_ASSIGN_OR_RETURN(LoadedModel loaded, load_model(options.model));
  const ModelConfig& config = loaded.model->config();
  const int64_t context = options.prompt_len + options.n_tokens;
  if (context > config.max_positions)
    return out_of_range(fmt::format("prompt {} + tokens {} exceeds the model's context {}", options.prompt_len,
                                    options.n_tokens, config.max_positions));
  const std::vector<int32_t> prompt = random_token_ids(options.prompt_len, config.vocab_size, options.model.seed);

  // Repeat the whole prefill + decode on fresh sessions; the first run is a warm-up.
  std::vector<double> prefill_ms, step_ms;
  for (int64_t repeat = 0; repeat <= options.repeats; ++repeat) {
    DJINN_ASSIGN_OR_RETURN(SessionId session, loaded.runtime->open_session(loaded.id, context));
    Result<GenerateResult> generated = loaded.runtime->generate(session, prompt, options.n_tokens + 1);
    DJINN_RETURN_IF_ERROR(loaded.runtime->close_session(session));
    DJINN_ASSIGN_OR_RETURN(GenerateResult result, std::move(generated));
    if (repeat == 0) continue;
    prefill_ms.push_back(result.prefill_ms);
    step_ms.insert(step_ms.end(), result.decode_step_ms.begin(), result.decode_step_ms.end());
  }
  const double prefill_p50 = percentile(prefill_ms, 50), step_p50 = percentile(step_ms, 50);
  double step_mean = 0;
  for (double s : step_ms) step_mean += s;
  step_mean /= static_cast<double>(std::max<size_t>(1, step_ms.size()));

  nlohmann::json out = {
      {"benchmark", "decode"},
      {"machine", to_json(machine_info())},
      {"device", device_name(loaded.runtime->backend().device())},
      {"model",
       {{"name", config.name},
        {"family", family_name(config.family)},
        {"dtype", dtype_name(loaded.model->dtype())},
        {"params", loaded.model->param_count()},
        {"weight_bytes", loaded.model->weight_bytes()}}},
      {"prompt_len", options.prompt_len},
      {"n_tokens", options.n_tokens},
      {"repeats", options.repeats},
      {"prefill_ms", prefill_p50},
      {"prefill_tokens_per_s", static_cast<double>(options.prompt_len) / (prefill_p50 / 1e3)},
      {"decode_ms_per_token_mean", step_mean},
      {"decode_ms_per_token_p50", step_p50},
      {"decode_ms_per_token_p99", percentile(step_ms, 99)},
      {"decode_tokens_per_s", 1e3 / step_mean},
      {"samples", {{"prefill_ms", prefill_ms}, {"decode_step_ms", step_ms}}},
  };
  if (options.json) {
    std::cout << out.dump(2) << '\n';
    return {};
  }
  fmt::print("bench decode: {} {} on {} ({})\n", config.name, dtype_name(loaded.model->dtype()),
             device_name(loaded.runtime->backend().device()), machine_info().cpu_model);
  fmt::print("  prefill {} tokens: {:.2f} ms p50 ({:.0f} tokens/s)\n", options.prompt_len, prefill_p50,
             static_cast<double>(options.prompt_len) / (prefill_p50 / 1e3));
  fmt::print("  decode: {:.3f} ms/token mean, {:.3f} p50, {:.3f} p99 ({:.1f} tokens/s) over {} steps\n", step_mean,
             step_p50, percentile(step_ms, 99), 1e3 / step_mean, step_ms.size());
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
  decode_cmd->add_flag("--json", decode->json, "print JSON");
  return {bench, [decode_cmd, decode]() -> Status {
            if (decode_cmd->parsed()) return bench_decode(*decode);
            return invalid_argument("unknown benchmark");
          }};
}

}  // namespace djinn::cli
