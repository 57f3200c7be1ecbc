// `djinn run`: load a model, prefill a prompt, greedy-decode, and report tokens,
// timings and the model's sizes (readable, or JSON with --json). --logits-out writes
// the logits of one forward pass over prompt + generated tokens.
#include <fmt/format.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "djinn/cli/commands.h"
#include "djinn/cli/model_options.h"
#include "djinn/exec/inference_session.h"
#include "djinn/models/safetensors.h"

namespace djinn::cli {
namespace {

struct RunOptions {
  ModelOptions model;
  std::string prompt_ids;
  int64_t prompt_len = 0;
  int64_t max_new_tokens = 16;
  std::string logits_out;
  bool json = false;
};

Status write_logits(const LoadedModel& loaded, const std::vector<int32_t>& tokens, const std::string& path) {
  const auto total = static_cast<int64_t>(tokens.size());
  DJINN_ASSIGN_OR_RETURN(SessionId session, loaded.runtime->open_session(loaded.id, total));
  Result<ForwardResult> forward_result = loaded.runtime->forward(session, tokens, /*all_logits=*/true);
  DJINN_RETURN_IF_ERROR(loaded.runtime->close_session(session));
  DJINN_ASSIGN_OR_RETURN(ForwardResult forward, std::move(forward_result));
  const TensorView logits = TensorView::contiguous(forward.logits.data(), {1, total, loaded.model->config().vocab_size},
                                                   DType::kF32, LifetimeClass::kIo);
  return write_safetensors(path, {{"logits", logits}});
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024.0 && unit < 4) {
    bytes /= 1024.0;
    ++unit;
  }
  return fmt::format("{:.1f} {}", bytes, units[unit]);
}

Status run(const RunOptions& options) {
  DJINN_ASSIGN_OR_RETURN(LoadedModel loaded, load_model(options.model));
  const Model& model = *loaded.model;
  const ModelConfig& config = model.config();

  std::vector<int32_t> prompt;
  if (!options.prompt_ids.empty()) {
    DJINN_ASSIGN_OR_RETURN(prompt, parse_token_ids(options.prompt_ids));
  } else {
    prompt = random_token_ids(options.prompt_len > 0 ? options.prompt_len : 16, config.vocab_size, options.model.seed);
  }
  if (options.max_new_tokens < 1) return invalid_argument("--max-new-tokens must be at least 1");
  const int64_t context = static_cast<int64_t>(prompt.size()) + options.max_new_tokens;
  if (context > config.max_positions)
    return out_of_range(fmt::format("prompt of {} tokens + {} new tokens = {} exceeds the model's context of {} tokens",
                                    prompt.size(), options.max_new_tokens, context, config.max_positions));

  DJINN_ASSIGN_OR_RETURN(SessionId session, loaded.runtime->open_session(loaded.id, context));
  DJINN_ASSIGN_OR_RETURN(GenerateResult generated, loaded.runtime->generate(session, prompt, options.max_new_tokens));
  const nlohmann::json stats_after_generate = loaded.runtime->stats_json();
  DJINN_RETURN_IF_ERROR(loaded.runtime->close_session(session));

  std::vector<int32_t> all_ids = prompt;
  all_ids.insert(all_ids.end(), generated.new_tokens.begin(), generated.new_tokens.end());
  if (!options.logits_out.empty()) DJINN_RETURN_IF_ERROR(write_logits(loaded, all_ids, options.logits_out));

  if (options.json) {
    nlohmann::json out = {
        {"generated_ids", all_ids},
        {"prompt_len", prompt.size()},
        {"new_tokens", generated.new_tokens.size()},
        {"timings",
         {{"load_ms", loaded.load_ms},
          {"prefill_ms", generated.prefill_ms},
          {"decode_ms_per_token", generated.decode_ms_per_token()}}},
        {"model",
         {{"name", config.name},
          {"family", family_name(config.family)},
          {"dtype", dtype_name(model.dtype())},
          {"params", model.param_count()},
          {"weight_bytes", model.weight_bytes()},
          {"kv_bytes_per_token", model.kv_bytes_per_token()}}},
        {"device", device_name(loaded.runtime->backend().device())},
        {"vmu", stats_after_generate["vmu"]},
        {"plan_cache", stats_after_generate["plan_cache"]},
    };
    if (!options.logits_out.empty()) out["logits_out"] = options.logits_out;
    std::cout << out.dump(2) << '\n';
    return {};
  }
  fmt::print("djinn run: {} ({}, {:.2f} M params, {} weights in {}, KV {} per token) on {}, loaded in {:.1f} ms\n",
             config.name, family_name(config.family), static_cast<double>(model.param_count()) / 1e6,
             human_bytes(static_cast<double>(model.weight_bytes())), dtype_name(model.dtype()),
             human_bytes(static_cast<double>(model.kv_bytes_per_token())), device_name(loaded.runtime->backend().device()),
             loaded.load_ms);
  fmt::print("  prompt    ({:3} tokens): {}\n", prompt.size(), fmt::join(prompt, " "));
  fmt::print("  generated ({:3} tokens): {}\n", generated.new_tokens.size(), fmt::join(generated.new_tokens, " "));
  const double decode_ms = generated.decode_ms_per_token();
  fmt::print("  prefill {:.2f} ms ({:.0f} tokens/s)   decode {:.3f} ms/token ({:.0f} tokens/s)\n", generated.prefill_ms,
             static_cast<double>(prompt.size()) / (generated.prefill_ms / 1e3), decode_ms,
             decode_ms > 0 ? 1e3 / decode_ms : 0.0);
  const nlohmann::json& plans = stats_after_generate["plan_cache"];
  const nlohmann::json& vmu = stats_after_generate["vmu"];
  fmt::print("  plan cache: {} hits, {} misses ({:.1f} % hit rate), {:.0f} us spent planning\n", plans["hits"].get<uint64_t>(),
             plans["misses"].get<uint64_t>(), 100.0 * plans["hit_rate"].get<double>(), plans["build_us_total"].get<double>());
  fmt::print("  vmu: text {} | data arena {} ({} used) | stack peak {} | capacity {}\n",
             human_bytes(vmu["text"]["used"].get<double>()), human_bytes(vmu["data"]["arena_bytes"].get<double>()),
             human_bytes(vmu["data"]["peak"].get<double>()), human_bytes(vmu["stack"]["peak"].get<double>()),
             human_bytes(vmu["capacity"].get<double>()));
  if (!options.logits_out.empty()) fmt::print("  logits [1, {}, {}] written to {}\n", all_ids.size(), config.vocab_size, options.logits_out);
  return {};
}

}  // namespace

Command add_run_command(CLI::App& app) {
  auto options = std::make_shared<RunOptions>();
  CLI::App* command = app.add_subcommand("run", "Prefill a prompt and greedy-decode on one model");
  add_model_options(*command, options->model);
  auto* ids = command->add_option("--prompt-ids", options->prompt_ids, "comma-separated prompt token ids");
  command->add_option("--prompt-len", options->prompt_len, "random prompt of N tokens (default 16)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->excludes(ids);
  command->add_option("--max-new-tokens", options->max_new_tokens, "tokens to generate (default 16)");
  command->add_option("--logits-out", options->logits_out,
                      "write logits [1, T, vocab] f32 of prompt + generated tokens to this safetensors file");
  command->add_flag("--json", options->json, "print JSON instead of a report");
  return {command, [options] { return run(*options); }};
}

}  // namespace djinn::cli
