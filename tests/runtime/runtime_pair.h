// Test helpers for the device paths exercised on the CPU: a plain CPU Runtime beside
// one on a test backend that behaves like a device in one respect (memory the host
// cannot address, step capture, copy queues of its own), so that every result can be
// compared with the plain one.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "djinn/runtime/runtime.h"

namespace djinn::test_support {

template <typename TestBackend>
struct RuntimePair {
  std::unique_ptr<Runtime> plain, tested;
  TestBackend* backend = nullptr;  // owned by `tested`
};

// Both runtimes with a small VMU and swap pool; the test backend is made from `args`.
template <typename TestBackend, typename... Args>
RuntimePair<TestBackend> make_runtime_pair(Args&&... args) {
  RuntimeOptions options;
  options.device_mem_gb = 0.25;
  options.host_pool_gb = 0.01;
  RuntimePair<TestBackend> pair;
  pair.plain = *Runtime::create(options);
  auto backend = std::make_unique<TestBackend>(std::forward<Args>(args)...);
  pair.backend = backend.get();
  Result<std::unique_ptr<Runtime>> tested = Runtime::create(std::move(backend), options);
  EXPECT_TRUE(tested.ok()) << tested.status().to_string();
  if (tested.ok()) pair.tested = std::move(tested).value();
  return pair;
}

// `n` token ids below `vocab`, the same for the same arguments.
inline std::vector<int32_t> prompt_of(int n, int64_t vocab, int salt = 0) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back(static_cast<int32_t>((i * 37 + 11 + salt * 7) % vocab));
  return ids;
}

}  // namespace djinn::test_support
