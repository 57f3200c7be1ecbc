// Options shared by every subcommand that loads a model (--model, --device, --dtype,
// --seed, --device-mem-gb, --arena-mb) and the code that turns them into a Runtime
// with the model loaded.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "djinn/backend/backend.h"
#include "djinn/core/status.h"
#include "djinn/models/model.h"
#include "djinn/runtime/runtime.h"

namespace djinn::cli {

struct ModelOptions {
  std::string model;          // directory or preset name
  std::string device = "cpu";
  std::string dtype = "f32";
  uint64_t seed = 0;
  double device_mem_gb = 0;  // VMU cap; 0: free memory minus a reserve
  double arena_mb = 0;       // session arena; 0: GENIE_VMU_SESSION_ARENA_MB or the session's need
  double host_pool_gb = 0;   // swap space in host memory (pinned on cuda)
};

void add_model_options(CLI::App& command, ModelOptions& options);

struct LoadedModel {
  std::unique_ptr<Runtime> runtime;
  ModelId id = 0;
  std::shared_ptr<const Model> model;
  double load_ms = 0.0;
};

Result<LoadedModel> load_model(const ModelOptions& options);

// "1,2,3" -> {1, 2, 3}; an error names the first piece that is not an i32.
Result<std::vector<int32_t>> parse_token_ids(const std::string& text);
// `count` ids in [0, vocab), a pure function of `seed`.
std::vector<int32_t> random_token_ids(int64_t count, int64_t vocab, uint64_t seed);

}  // namespace djinn::cli
