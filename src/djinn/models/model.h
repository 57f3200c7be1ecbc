// Model: a config plus its weights, loaded from a Hugging Face directory
// (config.json + model.safetensors, or a sharded model.safetensors.index.json) or made
// from a preset with deterministic random weights.
//
// Weights live in one contiguous allocation (LoadOptions::allocator: the VMU's Text
// segment under a Runtime), converted to the model's dtype, each 64-byte aligned; a Model is immutable once built and shared (read-only) by every
// session that runs it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "djinn/core/status.h"
#include "djinn/core/tensor.h"
#include "djinn/models/model_config.h"
#include "djinn/models/model_graph.h"

namespace djinn {

// Memory for a model's weights: `data` holds the bytes asked for (64-byte aligned);
// `keepalive` owns it (freeing it when the last copy goes, e.g. a Text extent).
struct WeightStorage {
  std::byte* data = nullptr;
  std::shared_ptr<void> keepalive;
};
using WeightAllocator = std::function<Result<WeightStorage>(size_t bytes, const std::string& model_name)>;
// Writes `bytes` from host memory into the allocator's memory (e.g. a cudaMemcpy into
// device memory). Set when the host cannot address that memory: every weight is then
// built in a host staging buffer and uploaded through it.
using WeightUploader = std::function<Status(void* dst, const void* host_src, size_t bytes)>;

struct LoadOptions {
  DType dtype = DType::kF32;  // storage dtype of weights and KV cache
  uint64_t seed = 0;          // presets: random weights are a function of (seed, tensor name)
  WeightAllocator allocator;  // where the weights live; empty: plain host memory
  WeightUploader upload;      // empty: the allocator's memory is host-addressable
};

class Model {
 public:
  // `source` is a model directory, or a preset name when no such directory exists.
  static Result<std::shared_ptr<const Model>> load(std::string_view source, const LoadOptions& options);
  static Result<std::shared_ptr<const Model>> load_directory(const std::string& dir, const LoadOptions& options);
  static Result<std::shared_ptr<const Model>> random(const ModelConfig& config, const LoadOptions& options);

  const ModelConfig& config() const { return config_; }
  DType dtype() const { return dtype_; }
  bool is_preset() const { return is_preset_; }

  // A weight by checkpoint name (see WeightSpec), or kNotFound.
  Result<TensorView> weight(std::string_view name) const;
  const std::map<std::string, TensorView, std::less<>>& weights() const { return weights_; }
  int64_t param_count() const { return param_count_; }
  size_t weight_bytes() const { return weight_bytes_; }
  size_t kv_bytes_per_token() const { return config_.kv_bytes_per_token(dtype_); }

 private:
  Model(ModelConfig config, DType dtype, bool is_preset);
  // Lays the specs out in one allocation; fills weights_ with views (contents unset).
  Status allocate(const std::vector<WeightSpec>& specs, const WeightAllocator& allocator);

  ModelConfig config_;
  DType dtype_;
  bool is_preset_;
  WeightStorage storage_;
  std::map<std::string, TensorView, std::less<>> weights_;
  int64_t param_count_ = 0;
  size_t weight_bytes_ = 0;
};

}  // namespace djinn
