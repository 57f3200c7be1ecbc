// What a golden fixture expects (tests/golden/<model>/expected.safetensors, written by
// Hugging Face transformers; see README.md here): the prompt, the greedy continuation
// and the logits of every position. Shared by the golden tests of every backend.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "djinn/models/safetensors.h"

namespace djinn::golden {

struct Expected {
  std::vector<int32_t> input_ids, generated_ids;
  std::vector<float> logits;  // [T, vocab], T = generated_ids.size()
};

inline Expected read_expected(const std::filesystem::path& dir) {
  const auto file = *SafetensorsFile::open(dir / "expected.safetensors");
  Expected e;
  auto ids = [&](const char* name) {
    const TensorView view = *file.tensor(name);
    std::vector<int32_t> out;
    for (int64_t i = 0; i < view.numel(); ++i) out.push_back(static_cast<int32_t>(view.as<int64_t>()[i]));
    return out;
  };
  e.input_ids = ids("input_ids");
  e.generated_ids = ids("generated_ids");
  const TensorView logits = *file.tensor("logits");
  e.logits.assign(logits.as<float>(), logits.as<float>() + logits.numel());
  return e;
}

}  // namespace djinn::golden
