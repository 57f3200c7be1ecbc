// `djinn bench swap`: SwapManager throughput against the raw copy throughput of the
// same memory, measured in the same run, for session sizes from 1 MiB to 1 GiB.
//
// A "session" here is its KV layout: 24 slots (12 layers x K, V) whose used rows are
// equal contiguous runs at a constant stride over an arena twice the used size, as in
// a half-full arena. Swap-out gathers them into one HostPool slice, swap-in scatters
// them back (CUDA: issued on the swap streams; CPU: on the SwapManager's workers, with
// non-temporal stores when larger than the cache, cpu/stream_copy.h). Swap-ins are
// measured as the policy issues them ahead of a step (SwapUse::kAhead: in_gbps) and as
// a step on a swapped session does (kStepFollows: in_step_follows_gbps). "both" runs a
// swap-out and a swap-in of two sessions at once. The baselines copy the same number of
// bytes as one contiguous copy (raw out / raw in) and two such copies on two threads at
// once (raw both): on the CPU backend glibc's memcpy ("device" memory is host memory),
// on CUDA a cudaMemcpyAsync between device memory and the pinned HostPool on the
// backend's swap streams.
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
#include "djinn/backend/backend.h"

namespace djinn::cli {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kSlots = 24;

double seconds_of(const std::function<void()>& work) {
  const auto start = Clock::now();
  work();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A session's KV layout in the backend's memory: kSlots used runs of equal size (bytes
// is a multiple of kSlots x 256) at a constant stride over an arena twice the used
// size, filled with non-zero bytes (no page faults while timed).
struct FakeSession {
  Backend* backend = nullptr;
  std::byte* arena = nullptr;
  std::vector<ByteSpan> spans;
  FakeSession() = default;
  FakeSession(const FakeSession&) = delete;
  FakeSession& operator=(const FakeSession&) = delete;
  ~FakeSession() {
    if (arena != nullptr) backend->deallocate(arena);
  }
};

Status make_session(Backend& backend, size_t bytes, uint8_t fill, FakeSession& s) {
  const size_t arena_bytes = 2 * bytes + 4096;
  s.backend = &backend;
  s.arena = static_cast<std::byte*>(backend.allocate(arena_bytes, 256));
  if (s.arena == nullptr) return out_of_memory(fmt::format("bench swap: {} of {} memory", format_bytes(arena_bytes),
                                                           device_name(backend.device())));
  const std::vector<std::byte> pattern(arena_bytes, std::byte{fill});
  DJINN_RETURN_IF_ERROR(backend.upload(s.arena, pattern.data(), arena_bytes));
  // Slot runs of whole 256-byte rows, as a KV cache's are (rows x heads x head_dim).
  const size_t per_slot = bytes / kSlots / 256 * 256, stride = arena_bytes / kSlots / 256 * 256;
  size_t left = bytes;
  for (int i = 0; i < kSlots; ++i) {
    const size_t n = i + 1 == kSlots ? left : per_slot;
    s.spans.push_back({s.arena + static_cast<size_t>(i) * stride, n});
    left -= n;
  }
  return {};
}

}  // namespace

Status bench_swap(const SwapBenchOptions& options) {
  const size_t max_bytes = static_cast<size_t>(options.max_mb) << 20;
  const DeviceKind device = options.device == "cuda" ? DeviceKind::kCuda : DeviceKind::kCpu;
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, make_backend(device));
  const auto pool_start = Clock::now();
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<HostPool> pool, HostPool::create(2 * max_bytes + (8u << 20), backend.get()));
  const double pool_seconds = std::chrono::duration<double>(Clock::now() - pool_start).count();
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<VmuRegion> region, VmuRegion::create(*backend, 1 << 20));
  DataSegment data(*region, 4096);
  SwapManager swap(*backend, *pool, data);

  nlohmann::json rows = nlohmann::json::array();
  for (size_t size = size_t{1} << 20; size <= max_bytes; size *= 4) {
    // Equal slots of whole rows, as a session's are: `size` rounded down to kSlots
    // runs of 256-byte rows (1 MiB: 24 x 43,520 bytes).
    const size_t bytes = size / kSlots / 256 * 256 * kSlots;
    FakeSession a, b;
    DJINN_RETURN_IF_ERROR(make_session(*backend, bytes, 1, a));
    DJINN_RETURN_IF_ERROR(make_session(*backend, bytes, 2, b));
    DJINN_ASSIGN_OR_RETURN(std::byte * slice_a, pool->allocate(bytes, "bench a"));
    DJINN_ASSIGN_OR_RETURN(std::byte * slice_b, pool->allocate(bytes, "bench b"));
    // The raw baselines: the same bytes as one contiguous copy on the same queues.
    const CopyRegion raw_out_a{slice_a, a.arena, bytes}, raw_in_a{a.arena, slice_a, bytes}, raw_in_b{b.arena, slice_b, bytes};
    auto raw = [&](const CopyRegion& region, CopyQueue queue) -> Status {
      if (device == DeviceKind::kCpu) {  // plain memcpy, not the backend's swap copy
        std::memcpy(region.dst, region.src, region.bytes);
        return {};
      }
      return backend->copy({&region, 1}, queue);
    };
    // Even: as many rounds of each order. Small copies are tens of microseconds and
    // their medians noisy: many rounds of them.
    const int repeats = bytes <= (4u << 20) ? 100 : 10;
    std::vector<double> out, in, in_step, both, raw_out, raw_in, raw_both, out_copy, in_copy, out_issue, in_issue;
    for (int r = 0; r < repeats + 1; ++r) {  // the first round warms up and is dropped
      const bool keep = r > 0;
      // Every copy's status is kept: a failed copy is an error, never a fast one.
      Status failed;
      auto keep_error = [&](Status s) {
        if (failed.ok() && !s.ok()) failed = std::move(s);
      };
      double t_both = 0, t_raw_out = 0, t_raw_in = 0, t_raw_both = 0;
      // One swap of session a, timed: its wall time, the call that starts it (host work
      // before the copy runs) and its copy time as SwapStats counts it.
      struct SwapTimes {
        double wall = 0, issue = 0, copy = 0;
      } t_out, t_in, t_in_step;
      auto timed_swap = [&](bool out_of_arena, SwapUse use, SwapTimes& t) {
        const SwapStats before = swap.stats();
        t.wall = seconds_of([&] {
          const auto start = Clock::now();
          SwapTicket ticket = out_of_arena ? swap.gather(a.spans, slice_a) : swap.scatter(slice_a, a.spans, use);
          t.issue = std::chrono::duration<double>(Clock::now() - start).count();
          keep_error(ticket.wait());
        });
        const SwapStats after = swap.stats();
        t.copy = out_of_arena ? after.seconds_out - before.seconds_out : after.seconds_in - before.seconds_in;
      };
      auto swap_out = [&] { timed_swap(true, SwapUse::kAhead, t_out); };
      auto swap_in = [&] { timed_swap(false, SwapUse::kAhead, t_in); };
      // A swap-in that a step follows (SwapUse::kStepFollows): never waited for as it is
      // issued, so on CUDA timed by events even when small.
      auto swap_in_step = [&] { timed_swap(false, SwapUse::kStepFollows, t_in_step); };
      auto swap_both = [&] {
        t_both = seconds_of([&] {
          SwapTicket t1 = swap.gather(a.spans, slice_a);
          SwapTicket t2 = swap.scatter(slice_b, b.spans, SwapUse::kAhead);
          keep_error(t1.wait());
          keep_error(t2.wait());
        });
      };
      Status other_failed;
      auto raw_out_copy = [&] { t_raw_out = seconds_of([&] { keep_error(raw(raw_out_a, CopyQueue::kSwapOut)); }); };
      auto raw_in_copy = [&] { t_raw_in = seconds_of([&] { keep_error(raw(raw_in_a, CopyQueue::kSwapIn)); }); };
      auto raw_both_copies = [&] {
        t_raw_both = seconds_of([&] {
          std::thread other([&] { other_failed = raw(raw_in_b, CopyQueue::kSwapIn); });
          keep_error(raw(raw_out_a, CopyQueue::kSwapOut));
          other.join();
        });
      };
      // Each swap beside its raw copy, in turns first and second (ABBA), so that neither
      // always follows the same kind of work.
      auto pair = [&](auto& swapped, auto& raw_copy) {
        if (r % 2 == 0) {
          swapped();
          raw_copy();
        } else {
          raw_copy();
          swapped();
        }
      };
      pair(swap_out, raw_out_copy);
      pair(swap_in, raw_in_copy);
      if (keep) raw_in.push_back(t_raw_in);  // two raw samples a round: beside each kind of swap-in
      pair(swap_in_step, raw_in_copy);
      pair(swap_both, raw_both_copies);
      keep_error(other_failed);
      DJINN_RETURN_IF_ERROR(failed);
      if (!keep) continue;
      out.push_back(t_out.wall);
      out_issue.push_back(t_out.issue);
      out_copy.push_back(t_out.copy);
      in.push_back(t_in.wall);
      in_issue.push_back(t_in.issue);
      in_copy.push_back(t_in.copy);
      in_step.push_back(t_in_step.wall);
      both.push_back(t_both);
      raw_out.push_back(t_raw_out);
      raw_in.push_back(t_raw_in);
      raw_both.push_back(t_raw_both);
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
                    // Swap-in with a step following it (the implicit one before a step).
                    {"in_step_follows_gbps", gbps(in_step, 1)},
                    {"in_step_follows_pct_of_raw", 100.0 * gbps(in_step, 1) / raw_in_gbps},
                    // The copy alone, timed on the worker: without the hand-off to it.
                    {"out_copy_gbps", gbps(out_copy, 1)},
                    {"in_copy_gbps", gbps(in_copy, 1)},
                    // The call that starts a swap (CUDA: ordering, events, the copy call), µs.
                    {"out_issue_us", 1e6 * percentile(out_issue, 50)},
                    {"in_issue_us", 1e6 * percentile(in_issue, 50)},
                    {"repeats", repeats}});
    pool->free(slice_a);
    pool->free(slice_b);
  }
  nlohmann::json out = {{"benchmark", "swap"},
                        {"device", device_name(backend->device())},
                        {"host_pool", pool->stats_json()},
                        {"host_pool_create_seconds", pool_seconds},
                        {"machine", machine_json(device == DeviceKind::kCuda)},
                        {"slots", kSlots},
                        {"rows", rows}};
  if (options.json) {
    std::cout << out.dump(2) << '\n';
    return {};
  }
  fmt::print("bench swap on {} ({}): GB/s, median of repeats\n", device_name(backend->device()),
             machine_title(device == DeviceKind::kCuda));
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
