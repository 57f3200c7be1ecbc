#include "djinn/models/model.h"

#include <fmt/format.h>

#include <cmath>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "djinn/core/parallel.h"
#include "djinn/models/safetensors.h"

namespace djinn {
namespace {

constexpr size_t kWeightAlignment = 64;  // bytes

size_t align_up(size_t n, size_t alignment) { return (n + alignment - 1) / alignment * alignment; }

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t name_hash(std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char ch : name) {
    h ^= static_cast<unsigned char>(ch);
    h *= 0x100000001b3ull;
  }
  return h;
}

// Fills `view` as WeightSpec::init says. Normal weights are uniform with the given
// standard deviation (uniform in [-sqrt(3) std, sqrt(3) std]), element i a pure
// function of (seed, name, i): deterministic whatever the thread count.
void fill_random(const TensorView& view, WeightInit init, float std_dev, uint64_t seed, std::string_view name) {
  const int64_t n = view.numel();
  auto fill_range = [&](int64_t begin, int64_t end) {
    constexpr int64_t kChunk = 4096;
    std::vector<float> chunk(kChunk);
    const uint64_t key = splitmix64(seed ^ name_hash(name));
    const float half_width = std_dev * std::sqrt(3.0f);
    for (int64_t at = begin; at < end; at += kChunk) {
      const int64_t count = std::min(kChunk, end - at);
      for (int64_t i = 0; i < count; ++i) {
        switch (init) {
          case WeightInit::kOnes: chunk[static_cast<size_t>(i)] = 1.0f; break;
          case WeightInit::kZeros: chunk[static_cast<size_t>(i)] = 0.0f; break;
          case WeightInit::kNormal: {
            const uint64_t bits = splitmix64(key + static_cast<uint64_t>(at + i));
            const float unit = static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);  // [0, 1)
            chunk[static_cast<size_t>(i)] = (2.0f * unit - 1.0f) * half_width;
            break;
          }
        }
      }
      convert_from_f32(chunk.data(), static_cast<size_t>(count), view.dtype,
                       static_cast<std::byte*>(view.data) + static_cast<size_t>(at) * dtype_size(view.dtype));
    }
  };
  parallel_ranges(n, int64_t{1} << 20, fill_range);
}

// Opens the checkpoint of `dir`: model.safetensors, or the shards named by
// model.safetensors.index.json.
Result<std::vector<SafetensorsFile>> open_checkpoint(const std::filesystem::path& dir) {
  std::vector<SafetensorsFile> files;
  const auto single = dir / "model.safetensors";
  const auto index = dir / "model.safetensors.index.json";
  if (std::filesystem::exists(single) || !std::filesystem::exists(index)) {
    DJINN_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(single));
    files.push_back(std::move(file));
    return files;
  }
  std::ifstream in(index);
  const nlohmann::json root = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.contains("weight_map") || !root["weight_map"].is_object())
    return data_loss(fmt::format("{}: not a valid index (needs a 'weight_map' object)", index.string()));
  std::set<std::string> shards;
  for (const auto& [name, shard] : root["weight_map"].items()) {
    if (!shard.is_string()) return data_loss(fmt::format("{}: shard of '{}' is not a string", index.string(), name));
    shards.insert(shard.get<std::string>());
  }
  for (const std::string& shard : shards) {
    DJINN_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(dir / shard));
    files.push_back(std::move(file));
  }
  return files;
}

// Finds `name` (GPT-2 checkpoints may carry a "transformer." prefix) in any shard.
Result<TensorView> find_tensor(const std::vector<SafetensorsFile>& files, const ModelConfig& config,
                               const std::string& name) {
  std::vector<std::string> candidates = {name};
  if (config.family == ModelFamily::kGpt2) candidates.push_back("transformer." + name);
  for (const SafetensorsFile& file : files)
    for (const std::string& candidate : candidates)
      if (file.contains(candidate)) return file.tensor(candidate);
  return not_found(fmt::format("tensor '{}' not found in {}", name,
                               files.size() == 1 ? files[0].path().string() : "any shard of the checkpoint"));
}

// Runs `produce` on a host view of `target`'s bytes: `target` itself when its memory is
// host-addressable (no `upload`), else `staging`, which is then uploaded into it.
template <typename Produce>
Status write_weight(const TensorView& target, const WeightUploader& upload, std::vector<std::byte>& staging,
                    Produce&& produce) {
  if (!upload) {
    produce(target);
    return {};
  }
  staging.resize(target.nbytes());
  TensorView host = target;
  host.data = staging.data();
  produce(host);
  return upload(target.data, staging.data(), staging.size());
}

}  // namespace

Model::Model(ModelConfig config, DType dtype, bool is_preset)
    : config_(std::move(config)), dtype_(dtype), is_preset_(is_preset) {}

Status Model::allocate(const std::vector<WeightSpec>& specs, const WeightAllocator& allocator) {
  size_t total = 0;
  for (const WeightSpec& spec : specs)
    total += align_up(static_cast<size_t>(num_elements(spec.shape)) * dtype_size(dtype_), kWeightAlignment);
  if (allocator) {
    DJINN_ASSIGN_OR_RETURN(storage_, allocator(total, config_.name));
  } else {
    void* data = std::aligned_alloc(kWeightAlignment, std::max<size_t>(total, kWeightAlignment));
    if (data == nullptr) return out_of_memory(fmt::format("host memory: {} bytes of weights for {}", total, config_.name));
    storage_ = WeightStorage{static_cast<std::byte*>(data), std::shared_ptr<void>(data, std::free)};
  }
  size_t offset = 0;
  for (const WeightSpec& spec : specs) {
    TensorView view = TensorView::contiguous(storage_.data + offset, spec.shape, dtype_, LifetimeClass::kWeight);
    offset += align_up(view.nbytes(), kWeightAlignment);
    param_count_ += view.numel();
    weights_.emplace(spec.name, std::move(view));
  }
  weight_bytes_ = static_cast<size_t>(param_count_) * dtype_size(dtype_);
  return {};
}

Result<TensorView> Model::weight(std::string_view name) const {
  auto it = weights_.find(name);
  if (it == weights_.end()) return not_found(fmt::format("model {} has no weight '{}'", config_.name, name));
  return it->second;
}

Result<std::shared_ptr<const Model>> Model::random(const ModelConfig& config, const LoadOptions& options) {
  DJINN_RETURN_IF_ERROR(config.validate());
  if (!is_floating(options.dtype)) return invalid_argument(fmt::format("weights cannot be {}", dtype_name(options.dtype)));
  std::shared_ptr<Model> model(new Model(config, options.dtype, /*is_preset=*/true));
  const std::vector<WeightSpec> specs = model_weight_specs(config);
  DJINN_RETURN_IF_ERROR(model->allocate(specs, options.allocator));
  std::vector<std::byte> staging;
  for (const WeightSpec& spec : specs) {
    const TensorView& target = model->weights_.at(spec.name);
    DJINN_RETURN_IF_ERROR(write_weight(target, options.upload, staging, [&](const TensorView& host) {
      fill_random(host, spec.init, config.initializer_range, options.seed, spec.name);
    }));
  }
  return std::shared_ptr<const Model>(std::move(model));
}

Result<std::shared_ptr<const Model>> Model::load_directory(const std::string& dir, const LoadOptions& options) {
  if (!is_floating(options.dtype)) return invalid_argument(fmt::format("weights cannot be {}", dtype_name(options.dtype)));
  DJINN_ASSIGN_OR_RETURN(ModelConfig config, load_hf_config(dir));
  DJINN_ASSIGN_OR_RETURN(std::vector<SafetensorsFile> files, open_checkpoint(dir));
  std::shared_ptr<Model> model(new Model(config, options.dtype, /*is_preset=*/false));
  const std::vector<WeightSpec> specs = model_weight_specs(config);
  DJINN_RETURN_IF_ERROR(model->allocate(specs, options.allocator));
  std::vector<float> widened;
  std::vector<std::byte> staging;
  for (const WeightSpec& spec : specs) {
    DJINN_ASSIGN_OR_RETURN(TensorView source, find_tensor(files, config, spec.name));
    if (source.shape != spec.shape)
      return invalid_argument(fmt::format("tensor '{}' has shape {} in the checkpoint, but {} needs {}", spec.name,
                                          to_string(source.shape), config.name, to_string(spec.shape)));
    if (!is_floating(source.dtype))
      return invalid_argument(fmt::format("tensor '{}' is {}, expected a floating dtype", spec.name, dtype_name(source.dtype)));
    const TensorView& target = model->weights_.at(spec.name);
    const auto count = static_cast<size_t>(source.numel());
    if (source.dtype == target.dtype && options.upload) {
      DJINN_RETURN_IF_ERROR(options.upload(target.data, source.data, source.nbytes()));  // straight from the mmap
      continue;
    }
    DJINN_RETURN_IF_ERROR(write_weight(target, options.upload, staging, [&](const TensorView& host) {
      if (source.dtype == host.dtype) {
        std::memcpy(host.data, source.data, source.nbytes());
      } else {
        widened.resize(count);
        convert_to_f32(source.data, source.dtype, count, widened.data());
        convert_from_f32(widened.data(), count, host.dtype, host.data);
      }
    }));
  }
  return std::shared_ptr<const Model>(std::move(model));
}

Result<std::shared_ptr<const Model>> Model::load(std::string_view source, const LoadOptions& options) {
  const std::filesystem::path path(source);
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) return load_directory(std::string(source), options);
  Result<ModelConfig> preset = preset_config(source);
  if (preset.ok()) return random(*preset, options);
  if (source.find('/') != std::string_view::npos || std::filesystem::exists(path, error))
    return not_found(fmt::format("model directory '{}' does not exist", source));
  return preset.status();
}

}  // namespace djinn
