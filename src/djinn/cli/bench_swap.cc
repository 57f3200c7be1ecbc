// `djinn bench swap`: SwapManager throughput against the raw copy throughput of the
// same memory, measured in the same run, for session sizes from 1 MiB to 1 GiB.
//
// A "session" here is its KV layout: 24 slots (12 layers x K, V) whose used rows are
// contiguous runs spread over an arena twice the used size, as in a half-full arena.
// Swap-out gathers them into one HostPool slice on the out worker, swap-in scatters
// them back on the in worker; "both" runs a swap-out and a swap-in of two sessions at
// once. The baselines copy the same bytes with one memcpy (raw out / raw in) and two
// memcpys on two threads at once (raw both). CPU backend: "device" memory is host
// memory, so every copy here is a memory-to-memory copy.
#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "djinn/cli/bench_stats.h"
#include "djinn/cli/bench_swap.h"
#include "djinn/core/machine_info.h"
#include "djinn/swap/swap_manager.h"
#include "djinn/vmu/vmu.h"
#include "djinn/backend/cpu/cpu_backend.h"

namespace djinn::cli {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kSlots = 24;

double seconds_of(const std::function<void()>& work) {
  const auto start = Clock::now();
  work();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct FakeSession {
  std::vector<std::byte> arena;  // "device" memory
  std::vector<ByteSpan> spans;
};

FakeSession make_session(size_t bytes) {
  FakeSession s;
  s.arena.assign(2 * bytes + 4096, std::byte{1});  // touched: no page faults while timed
  const size_t per_slot = bytes / kSlots, stride = s.arena.size() / kSlots;
  size_t left = bytes;
  for (int i = 0; i < kSlots; ++i) {
    const size_t n = i + 1 == kSlots ? left : per_slot;
    s.spans.push_back({s.arena.data() + static_cast<size_t>(i) * stride, n});
    left -= n;
  }
  return s;
}

}  // namespace

Status bench_swap(const SwapBenchOptions& options) {
  const size_t max_bytes = static_cast<size_t>(options.max_mb) << 20;
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<HostPool> pool, HostPool::create(2 * max_bytes + (8u << 20)));
  CpuBackend backend;
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<VmuRegion> region, VmuRegion::create(backend, 1 << 20));
  DataSegment data(*region, 4096);
  SwapManager swap(*pool, data);

  nlohmann::json rows = nlohmann::json::array();
  for (size_t bytes = size_t{1} << 20; bytes <= max_bytes; bytes *= 4) {
    FakeSession a = make_session(bytes), b = make_session(bytes);
    DJINN_ASSIGN_OR_RETURN(std::byte * slice_a, pool->allocate(bytes, "bench a"));
    DJINN_ASSIGN_OR_RETURN(std::byte * slice_b, pool->allocate(bytes, "bench b"));
    std::vector<std::byte> contiguous_a(bytes, std::byte{2}), contiguous_b(bytes, std::byte{3});
    const int repeats = bytes <= (16u << 20) ? 9 : 3;
    std::vector<double> out, in, both, raw_out, raw_in, raw_both, out_copy, in_copy;
    for (int r = 0; r < repeats; ++r) {
      SwapStats before = swap.stats();
      out.push_back(seconds_of([&] { (void)swap.gather(a.spans, slice_a).get(); }));
      out_copy.push_back(swap.stats().seconds_out - before.seconds_out);
      before = swap.stats();
      in.push_back(seconds_of([&] { (void)swap.scatter(slice_a, a.spans).get(); }));
      in_copy.push_back(swap.stats().seconds_in - before.seconds_in);
      both.push_back(seconds_of([&] {
        SwapTicket t1 = swap.gather(a.spans, slice_a);
        SwapTicket t2 = swap.scatter(slice_b, b.spans);
        (void)t1.get();
        (void)t2.get();
      }));
      raw_out.push_back(seconds_of([&] { std::memcpy(slice_a, contiguous_a.data(), bytes); }));
      raw_in.push_back(seconds_of([&] { std::memcpy(contiguous_a.data(), slice_a, bytes); }));
      raw_both.push_back(seconds_of([&] {
        std::thread other([&] { std::memcpy(contiguous_b.data(), slice_b, bytes); });
        std::memcpy(slice_a, contiguous_a.data(), bytes);
        other.join();
      }));
    }
    auto gbps = [&](const std::vector<double>& seconds, double factor) {
      return factor * static_cast<double>(bytes) / percentile(seconds, 50) / 1e9;
    };
    const double out_gbps = gbps(out, 1), in_gbps = gbps(in, 1), raw_out_gbps = gbps(raw_out, 1),
                 raw_in_gbps = gbps(raw_in, 1);
    rows.push_back({{"bytes", bytes},
                    {"out_gbps", out_gbps},
                    {"in_gbps", in_gbps},
                    {"both_gbps", gbps(both, 2)},
                    {"raw_out_gbps", raw_out_gbps},
                    {"raw_in_gbps", raw_in_gbps},
                    {"raw_both_gbps", gbps(raw_both, 2)},
                    {"out_pct_of_raw", 100.0 * out_gbps / raw_out_gbps},
                    {"in_pct_of_raw", 100.0 * in_gbps / raw_in_gbps},
                    // The copy alone, timed on the worker: without the hand-off to it.
                    {"out_copy_gbps", gbps(out_copy, 1)},
                    {"in_copy_gbps", gbps(in_copy, 1)},
                    {"repeats", repeats}});
    pool->free(slice_a);
    pool->free(slice_b);
  }
  nlohmann::json out = {{"benchmark", "swap"},
                        {"device", "cpu"},
                        {"machine", to_json(machine_info())},
                        {"slots", kSlots},
                        {"rows", rows}};
  if (options.json) {
    std::cout << out.dump(2) << '\n';
    return {};
  }
  fmt::print("bench swap on cpu ({}): GB/s, median of repeats\n", machine_info().cpu_model);
  fmt::print("  {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7} {:>9} {:>9}\n", "size", "out", "in", "both",
             "raw out", "raw in", "raw both", "out %", "in %", "out copy", "in copy");
  for (const nlohmann::json& r : rows)
    fmt::print("  {:>10} {:>8.2f} {:>8.2f} {:>8.2f} {:>8.2f} {:>8.2f} {:>8.2f} {:>6.1f}% {:>6.1f}% {:>9.2f} {:>9.2f}\n",
               format_bytes(r["bytes"].get<size_t>()), r["out_gbps"].get<double>(), r["in_gbps"].get<double>(),
               r["both_gbps"].get<double>(), r["raw_out_gbps"].get<double>(), r["raw_in_gbps"].get<double>(),
               r["raw_both_gbps"].get<double>(), r["out_pct_of_raw"].get<double>(), r["in_pct_of_raw"].get<double>(),
               r["out_copy_gbps"].get<double>(), r["in_copy_gbps"].get<double>());
  return {};
}

}  // namespace djinn::cli
