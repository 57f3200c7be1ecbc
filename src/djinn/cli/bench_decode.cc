#include "djinn/cli/bench_decode.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <optional>
#include <iostream>
#include <nlohmann/json.hpp>

#include "djinn/backend/cuda/cuda_baselines.h"
#include "djinn/cli/bench_stats.h"
#include "djinn/exec/inference_session.h"

namespace djinn::cli {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// The device's ceilings, measured before the model is loaded.
struct Ceilings {
  DeviceCopyBandwidth copy;
  GemmThroughput gemm;
};

nlohmann::json to_json(const Ceilings& c) {
  return {{"copy", {{"ok", c.copy.ok}, {"error", c.copy.error}, {"bytes", c.copy.bytes}, {"gbps", c.copy.gbps},
                    {"median_ms", c.copy.median_ms}, {"repetitions", c.copy.repetitions}}},
          {"gemm", {{"ok", c.gemm.ok}, {"error", c.gemm.error}, {"n", c.gemm.n}, {"input", gemm_input_name(c.gemm.input)},
                    {"tflops", c.gemm.tflops}, {"median_ms", c.gemm.median_ms}, {"repetitions", c.gemm.repetitions}}}};
}

// FLOPs of one prefill of `tokens` tokens as djinn computes it: every layer's matmuls
// for every token (2 per weight element), causal attention (QK^T and PV over the
// visible half: 2 x tokens^2 x n_heads x head_dim per layer), and the lm head for the
// last token only.
double prefill_flops(const Model& model, int64_t tokens) {
  const ModelConfig& c = model.config();
  const double embed = static_cast<double>(c.vocab_size * c.hidden_size);
  const double head = embed;  // the last row's logits, tied or not
  const double layer_params =
      static_cast<double>(model.param_count()) - embed * (c.tie_embeddings ? 1.0 : 2.0) -
      (c.family == ModelFamily::kGpt2 ? static_cast<double>(c.max_positions * c.hidden_size) : 0.0);
  const double t = static_cast<double>(tokens);
  const double attention = 2.0 * static_cast<double>(c.n_layers) * t * t * static_cast<double>(c.n_heads * c.head_dim);
  return 2.0 * layer_params * t + attention + 2.0 * head;
}

// One batched decode measurement: `batch` sessions prefilled with the prompt, then
// `steps` batched steps; bytes read per step are the weights plus every session's KV.
Result<nlohmann::json> batched_decode(LoadedModel& loaded, std::span<const int32_t> prompt, int64_t batch, int64_t steps,
                                      int64_t capacity, const Ceilings* ceilings) {
  Runtime& runtime = *loaded.runtime;
  std::vector<SessionId> sessions;
  auto close_all = [&] {
    for (SessionId s : sessions) (void)runtime.close_session(s);
  };
  std::vector<int32_t> tokens;
  for (int64_t b = 0; b < batch; ++b) {
    Result<SessionId> opened = runtime.open_session(loaded.id, capacity);
    if (!opened.ok()) {
      close_all();
      return opened.status();
    }
    sessions.push_back(*opened);
    Result<ForwardResult> prefill = runtime.forward(*opened, prompt);
    if (!prefill.ok()) {
      close_all();
      return prefill.status();
    }
    tokens.push_back(prefill->next_token);
  }
  std::vector<double> step_ms;
  std::vector<double> kv_bytes;
  const size_t per_token = loaded.model->kv_bytes_per_token();
  for (int64_t step = 0; step <= steps; ++step) {  // step 0 warms up (plans the batch graph)
    const double context = static_cast<double>(static_cast<int64_t>(prompt.size()) + step + 1);  // keys read, each
    const auto start = Clock::now();
    // Tokens only, as the server's Generate path steps (no logits to the host).
    Result<std::vector<ForwardResult>> results = runtime.decode_batch(sessions, tokens, /*with_logits=*/false);
    const double ms = ms_since(start);
    if (!results.ok()) {
      close_all();
      return results.status();
    }
    for (size_t b = 0; b < results->size(); ++b) tokens[b] = (*results)[b].next_token;
    if (step == 0) continue;
    step_ms.push_back(ms);
    kv_bytes.push_back(context * static_cast<double>(per_token) * static_cast<double>(batch));
  }
  close_all();
  const double p50 = percentile(step_ms, 50);
  const double bytes = static_cast<double>(loaded.model->weight_bytes()) + mean(kv_bytes);
  nlohmann::json row = {{"batch", batch},
                        {"steps", steps},
                        {"context", prompt.size()},
                        {"step_ms_p50", p50},
                        {"step_ms_p99", percentile(step_ms, 99)},
                        {"tokens_per_s", 1e3 * static_cast<double>(batch) / p50},
                        {"bytes_read_per_step", bytes},
                        {"achieved_gbps", bytes / (p50 / 1e3) / 1e9},
                        {"samples_ms", step_ms}};
  if (ceilings != nullptr && ceilings->copy.ok)
    row["pct_of_copy_bandwidth"] = 100.0 * bytes / (p50 / 1e3) / 1e9 / ceilings->copy.gbps;
  return row;
}

// Decode steps of one session with and without a swap of another (same-sized)
// session in flight. The other session is swapped out, then in, again and again;
// every step is timed and filed under "during" when a copy was in flight for all of it.
Result<nlohmann::json> decode_during_swaps(LoadedModel& loaded, std::span<const int32_t> prompt, int64_t steps,
                                           int64_t capacity) {
  Runtime& runtime = *loaded.runtime;
  DJINN_ASSIGN_OR_RETURN(SessionId main, runtime.open_session(loaded.id, capacity));
  DJINN_ASSIGN_OR_RETURN(SessionId other, runtime.open_session(loaded.id, capacity));
  auto close_both = [&] {
    (void)runtime.close_session(main);
    (void)runtime.close_session(other);
  };
  Result<ForwardResult> first = runtime.forward(main, prompt);
  Result<ForwardResult> filled = first.ok() ? runtime.forward(other, prompt) : first;
  if (!filled.ok()) {
    close_both();
    return filled.status();
  }
  int32_t token = first->next_token;
  std::vector<double> quiet_ms, during_ms;
  std::optional<SwapTicket> in_flight;
  bool other_is_out = false;
  const SwapStats before = runtime.swap_manager().stats();
  const int64_t room = capacity - static_cast<int64_t>(prompt.size()) - 1;  // the main session's context
  for (int64_t step = 0; step < std::min(4 * steps, room) && static_cast<int64_t>(during_ms.size()) < steps; ++step) {
    // Odd steps: make sure a copy is in flight; even steps: make sure none is.
    const bool want_swap = step % 2 == 1;
    if (!want_swap && in_flight) {
      (void)in_flight->wait();
      in_flight.reset();
      if (Status settled = runtime.settle(other); !settled.ok()) {
        close_both();
        return settled;
      }
    }
    if (want_swap && !in_flight) {
      Result<SwapTicket> started = other_is_out ? runtime.swap_in(other, SwapUse::kAhead) : runtime.swap_out(other);
      if (!started.ok()) {
        close_both();
        return started.status();
      }
      other_is_out = !other_is_out;
      in_flight = *started;
    }
    const auto start = Clock::now();
    Result<ForwardResult> r = runtime.forward(main, std::span<const int32_t>(&token, 1));
    const double ms = ms_since(start);
    if (!r.ok()) {
      close_both();
      return r.status();
    }
    token = r->next_token;
    const bool still_copying = in_flight && !in_flight->done();
    if (step < 2) continue;  // warm-up
    if (!want_swap) quiet_ms.push_back(ms);
    else if (still_copying) during_ms.push_back(ms);  // the copy outlasted the step
  }
  if (in_flight) (void)in_flight->wait();
  (void)runtime.settle(other);
  const SwapStats after = runtime.swap_manager().stats();
  close_both();
  const double quiet = percentile(quiet_ms, 50), during = percentile(during_ms, 50);
  return nlohmann::json{{"steps_quiet", quiet_ms.size()},
                        {"steps_during_swaps", during_ms.size()},
                        {"decode_ms_p50_quiet", quiet},
                        {"decode_ms_p50_during_swaps", during},
                        // null when no step overlapped a copy (copies shorter than a step)
                        {"slowdown_pct", quiet > 0 && !during_ms.empty() ? nlohmann::json(100.0 * (during / quiet - 1.0))
                                                                          : nlohmann::json()},
                        {"swaps_out", after.swaps_out - before.swaps_out},
                        {"swaps_in", after.swaps_in - before.swaps_in},
                        {"swap_out_gbps", (after.bytes_out - before.bytes_out) / std::max(1e-9, after.seconds_out - before.seconds_out) / 1e9},
                        {"swap_in_gbps", (after.bytes_in - before.bytes_in) / std::max(1e-9, after.seconds_in - before.seconds_in) / 1e9},
                        {"samples_quiet_ms", quiet_ms},
                        {"samples_during_ms", during_ms}};
}

}  // namespace

Status bench_decode(const DecodeBenchOptions& options) {
  const bool cuda = options.model.device == "cuda";
  Ceilings ceilings;
  if (cuda) {  // before the VMU takes the device's memory
    ceilings.copy = device_copy_bandwidth(size_t{1} << 30);
    ceilings.gemm = cublas_gemm_tflops(8192, options.model.dtype == "bf16" ? GemmInput::kBF16 : GemmInput::kF16);
    if (!ceilings.copy.ok) return internal_error(fmt::format("copy-bandwidth baseline: {}", ceilings.copy.error));
    if (!ceilings.gemm.ok) return internal_error(fmt::format("GEMM baseline: {}", ceilings.gemm.error));
  }
  DJINN_ASSIGN_OR_RETURN(LoadedModel loaded, load_model(options.model));
  const ModelConfig& config = loaded.model->config();
  const int64_t context = options.prompt_len + options.n_tokens + 1;
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
  const double step_mean = mean(step_ms);
  const double weight_bytes = static_cast<double>(loaded.model->weight_bytes());
  const double flops = prefill_flops(*loaded.model, options.prompt_len);

  nlohmann::json batched = nlohmann::json::array();
  for (int64_t batch : options.batches) {
    DJINN_ASSIGN_OR_RETURN(nlohmann::json row, batched_decode(loaded, prompt, batch, options.n_tokens, context,
                                                              cuda ? &ceilings : nullptr));
    batched.push_back(std::move(row));
  }

  nlohmann::json swaps;
  if (options.swap_during) {
    DJINN_ASSIGN_OR_RETURN(swaps, decode_during_swaps(loaded, prompt, options.n_tokens, context));
  }

  nlohmann::json out = {
      {"benchmark", "decode"},
      {"machine", machine_json(cuda)},
      {"device", device_name(loaded.runtime->backend().device())},
      {"model",
       {{"name", config.name},
        {"family", family_name(config.family)},
        {"dtype", dtype_name(loaded.model->dtype())},
        {"params", loaded.model->param_count()},
        {"weight_bytes", loaded.model->weight_bytes()}}},
      {"load_ms", loaded.load_ms},
      {"prompt_len", options.prompt_len},
      {"n_tokens", options.n_tokens},
      {"repeats", options.repeats},
      {"prefill_ms", prefill_p50},
      {"prefill_tokens_per_s", static_cast<double>(options.prompt_len) / (prefill_p50 / 1e3)},
      {"prefill_flops", flops},
      {"prefill_tflops", flops / (prefill_p50 / 1e3) / 1e12},
      {"decode_ms_per_token_mean", step_mean},
      {"decode_ms_per_token_p50", step_p50},
      {"decode_ms_per_token_p99", percentile(step_ms, 99)},
      {"decode_tokens_per_s", 1e3 / step_mean},
      {"batched", batched},
      {"decode_during_swaps", swaps},
      {"samples", {{"prefill_ms", prefill_ms}, {"decode_step_ms", step_ms}}},
  };
  if (cuda) {
    out["baselines"] = to_json(ceilings);
    const double bound_ms = weight_bytes / (ceilings.copy.gbps * 1e9) * 1e3;
    out["targets"] = {{"decode_bound_ms", bound_ms},
                      {"decode_step_over_bound", step_p50 / bound_ms},
                      {"prefill_pct_of_gemm", 100.0 * (flops / (prefill_p50 / 1e3) / 1e12) / ceilings.gemm.tflops}};
  }
  if (options.json) {
    std::cout << out.dump(2) << '\n';
    return {};
  }
  fmt::print("bench decode: {} {} on {} ({})\n", config.name, dtype_name(loaded.model->dtype()),
             device_name(loaded.runtime->backend().device()), machine_title(cuda));
  if (cuda)
    fmt::print("  ceilings: device copy {:.0f} GB/s (read + write), cuBLAS {} GEMM 8192^3 {:.0f} TFLOP/s\n",
               ceilings.copy.gbps, gemm_input_name(ceilings.gemm.input), ceilings.gemm.tflops);
  fmt::print("  prefill {} tokens: {:.2f} ms p50 ({:.0f} tokens/s, {:.1f} TFLOP/s)\n", options.prompt_len, prefill_p50,
             static_cast<double>(options.prompt_len) / (prefill_p50 / 1e3), flops / (prefill_p50 / 1e3) / 1e12);
  fmt::print("  decode: {:.3f} ms/token mean, {:.3f} p50, {:.3f} p99 ({:.1f} tokens/s) over {} steps\n", step_mean,
             step_p50, percentile(step_ms, 99), 1e3 / step_mean, step_ms.size());
  if (cuda)
    fmt::print("  targets: decode step / bound {:.2f} (bound {:.2f} ms; target <= 1.25), prefill {:.1f}% of GEMM (>= 60%)\n",
               out["targets"]["decode_step_over_bound"].get<double>(), out["targets"]["decode_bound_ms"].get<double>(),
               out["targets"]["prefill_pct_of_gemm"].get<double>());
  if (options.swap_during && swaps["slowdown_pct"].is_null())
    fmt::print("  decode with a swap in flight: no step overlapped a copy (copies are shorter than a step)\n");
  else if (options.swap_during)
    fmt::print("  decode with a swap in flight: {:.3f} ms p50 vs {:.3f} quiet: {:+.1f}% (target <= 15%; {} swaps out, {} in)\n",
               swaps["decode_ms_p50_during_swaps"].get<double>(), swaps["decode_ms_p50_quiet"].get<double>(),
               swaps["slowdown_pct"].get<double>(), swaps["swaps_out"].get<uint64_t>(), swaps["swaps_in"].get<uint64_t>());
  for (const nlohmann::json& row : batched)
    fmt::print("  batched decode x{}: {:.3f} ms/step p50, {:.0f} tokens/s, {:.0f} GB/s{}\n", row["batch"].get<int64_t>(),
               row["step_ms_p50"].get<double>(), row["tokens_per_s"].get<double>(), row["achieved_gbps"].get<double>(),
               row.contains("pct_of_copy_bandwidth")
                   ? fmt::format(" = {:.1f}% of copy bandwidth (>= 75%)", row["pct_of_copy_bandwidth"].get<double>())
                   : std::string());
  return {};
}

}  // namespace djinn::cli
