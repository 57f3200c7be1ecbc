// Small statistics shared by the `djinn bench` programs.
#pragma once

#include <algorithm>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "djinn/backend/cuda/cuda_device.h"
#include "djinn/core/machine_info.h"

namespace djinn::cli {

// Nearest-rank percentile, p in [0, 100]; 0 for no samples.
inline double percentile(std::vector<double> samples, double p) {
  if (samples.empty()) return 0.0;
  std::sort(samples.begin(), samples.end());
  const auto index = static_cast<size_t>(p / 100.0 * static_cast<double>(samples.size() - 1) + 0.5);
  return samples[std::min(index, samples.size() - 1)];
}

// A 95 % confidence interval of the median of `samples`: the 2.5th and 97.5th
// percentiles of the medians of 2000 resamples with replacement (a fixed seed, so a
// result file reproduces from its samples). {0, 0} for no samples.
inline std::pair<double, double> median_ci95(const std::vector<double>& samples) {
  if (samples.empty()) return {0.0, 0.0};
  std::mt19937_64 rng(42);
  std::uniform_int_distribution<size_t> pick(0, samples.size() - 1);
  std::vector<double> medians, resample(samples.size());
  for (int r = 0; r < 2000; ++r) {
    for (double& x : resample) x = samples[pick(rng)];
    medians.push_back(percentile(resample, 50));
  }
  return {percentile(medians, 2.5), percentile(medians, 97.5)};
}

inline double mean(const std::vector<double>& samples) {
  double sum = 0;
  for (double s : samples) sum += s;
  return samples.empty() ? 0.0 : sum / static_cast<double>(samples.size());
}

// The machine a result was measured on: the host (CPU model, cores, memory) and, when
// the backend is cuda, the GPU (name, memory).
inline nlohmann::json machine_json(bool with_gpu) {
  nlohmann::json out = to_json(machine_info());
  if (with_gpu) {
    const CudaDeviceInfo gpu = cuda_device_info();
    out["gpu"] = {{"name", gpu.name}, {"total_bytes", gpu.total_bytes}, {"devices", gpu.device_count}};
  }
  return out;
}

// What to name in a printed table's title: the GPU for cuda runs, else the CPU.
inline std::string machine_title(bool with_gpu) {
  return with_gpu ? cuda_device_info().name : machine_info().cpu_model;
}

}  // namespace djinn::cli
