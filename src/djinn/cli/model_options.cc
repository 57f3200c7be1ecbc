#include "djinn/cli/model_options.h"

#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <random>

namespace djinn::cli {

void add_model_options(CLI::App& command, ModelOptions& options) {
  command.add_option("--model", options.model, "Hugging Face model directory or preset name")->required();
  command.add_option("--device", options.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  command.add_option("--dtype", options.dtype, "storage dtype of weights and KV cache")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  command.add_option("--seed", options.seed, "seed of preset weights and random prompts");
  command.add_option("--device-mem-gb", options.device_mem_gb, "cap on the device memory the VMU manages, GiB")
      ->check(CLI::PositiveNumber);
  command.add_option("--arena-mb", options.arena_mb, "session arena size, MiB (default: the session's KV need)")
      ->check(CLI::PositiveNumber);
}

Result<LoadedModel> load_model(const ModelOptions& options) {
  LoadedModel loaded;
  RuntimeOptions runtime_options;
  runtime_options.device = options.device == "cuda" ? DeviceKind::kCuda : DeviceKind::kCpu;
  runtime_options.device_mem_gb = options.device_mem_gb;
  runtime_options.arena_mb = options.arena_mb;
  runtime_options.host_pool_gb = options.host_pool_gb;
  DJINN_ASSIGN_OR_RETURN(loaded.runtime, Runtime::create(runtime_options));
  const auto dtype = parse_dtype(options.dtype);
  if (!dtype) return invalid_argument(fmt::format("unknown dtype '{}'", options.dtype));
  const auto start = std::chrono::steady_clock::now();
  LoadOptions load_options;
  load_options.dtype = *dtype;
  load_options.seed = options.seed;
  DJINN_ASSIGN_OR_RETURN(loaded.id, loaded.runtime->load_model(options.model, load_options));
  DJINN_ASSIGN_OR_RETURN(loaded.model, loaded.runtime->model(loaded.id));
  loaded.load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return loaded;
}

Result<std::vector<int32_t>> parse_token_ids(const std::string& text) {
  std::vector<int32_t> ids;
  size_t at = 0;
  while (at <= text.size()) {
    size_t end = text.find(',', at);
    if (end == std::string::npos) end = text.size();
    std::string_view piece(text.data() + at, end - at);
    while (!piece.empty() && piece.front() == ' ') piece.remove_prefix(1);
    while (!piece.empty() && piece.back() == ' ') piece.remove_suffix(1);
    int32_t id = 0;
    const auto [ptr, ec] = std::from_chars(piece.data(), piece.data() + piece.size(), id);
    if (piece.empty() || ec != std::errc() || ptr != piece.data() + piece.size())
      return invalid_argument(fmt::format("prompt id '{}' (item {}) is not an integer token id", piece, ids.size() + 1));
    ids.push_back(id);
    at = end + 1;
  }
  return ids;
}

std::vector<int32_t> random_token_ids(int64_t count, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed ^ 0x70726f6d7074ull);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(count));
  for (int32_t& id : ids) id = pick(rng);
  return ids;
}

}  // namespace djinn::cli
