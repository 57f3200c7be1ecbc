// SwapManager: moves an idle session's KV cache between its Data-segment arena and a
// slice of the HostPool, on copy queues of their own (one per direction), so compute
// goes on meanwhile.
//
// Policy and contract:
//  - only the used part moves: rows [0, length) of every KV slot, packed back to back
//    in one HostPool slice (slot 0's rows, then slot 1's, ...);
//  - the HostPool is sliced, never allocated per swap; a pool without room refuses the
//    swap-out (counted) and the session stays resident: state is never dropped;
//  - swap_out frees the session's arena once the copy is done; swap_in takes a fresh
//    arena (the session's KV views move to it) and frees the slice;
//  - every call returns a SwapTicket that completes with the copy. Where the backend has
//    queues of its own (CUDA: a stream per direction) the copies are issued there from
//    the calling thread and the ticket is an event: a step can be ordered after a
//    swap-in on the device (SwapTicket::order_compute_after) while the host goes on.
//    On the CPU backend copies of at most kInlineCopyBytes run at once on the calling
//    thread (a hand-off to a worker costs more than they take); larger ones run on a
//    worker thread per direction, the ticket being its result.
// Threads: swap_out / swap_in / gather / scatter from the thread that owns the sessions
// (the scheduler); stats() from any thread; a ticket from any thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <nlohmann/json.hpp>
#include <span>
#include <thread>

#include "djinn/backend/backend.h"
#include "djinn/core/status.h"
#include "djinn/vmu/data_segment.h"
#include "djinn/vmu/host_pool.h"

namespace djinn {

class InferenceSession;

// One contiguous run of bytes to move (a KV slot's used rows).
struct ByteSpan {
  std::byte* data = nullptr;
  size_t bytes = 0;
};

// The completion of one swap copy. Cheap to copy (shared state); default: no copy.
class SwapTicket {
 public:
  SwapTicket() = default;
  bool valid() const { return state_ != nullptr; }
  // Whether the copy has finished (never blocks).
  bool done() const;
  // Blocks until the copy has finished; returns its error, if any. Repeatable.
  Status wait() const;
  // Orders the backend's compute queue after the copy: on the device where the copy
  // ran on a backend queue (no host wait), else by waiting here.
  Status order_compute_after(Backend& backend) const;
  // When the copy was issued (host clock), and how long it took on its queue, seconds
  // (the device's own timing where there is one; else the worker's). Valid once done.
  std::chrono::steady_clock::time_point issued_at() const;
  double copy_seconds() const;

 private:
  friend class SwapManager;
  struct State {
    std::chrono::steady_clock::time_point issued_at = std::chrono::steady_clock::now();
    std::optional<Status> inline_result;     // run by the calling thread, or refused: finished
    std::shared_future<Status> host;         // copies run by a worker
    std::shared_ptr<QueueEvent> device;      // copies on a backend queue
    std::function<void(double)> on_finish;   // called once, with copy_seconds, when success is first seen
    std::once_flag finished;
    double seconds = 0;
  };
  // Runs on_finish once, if the copy succeeded (from whichever thread first sees it done).
  void finish(const Status& copied) const;
  std::shared_ptr<State> state_;
};

struct SwapStats {
  uint64_t swaps_out = 0, swaps_in = 0;
  uint64_t bytes_out = 0, bytes_in = 0;
  double seconds_out = 0, seconds_in = 0;  // copy time on the worker
  uint64_t refusals = 0;                   // swap-outs refused: the HostPool had no room
};
nlohmann::json to_json(const SwapStats& stats);

class SwapManager {
 public:
  // CPU backend: copies up to this size run on the calling thread (measured: handing a
  // 1 MiB copy to a worker and waiting for it took ~2.5x the memcpy itself).
  static constexpr size_t kInlineCopyBytes = size_t{8} << 20;

  // `backend` does the copies, on its kSwapOut / kSwapIn queues (one worker each).
  SwapManager(Backend& backend, HostPool& pool, DataSegment& data);
  ~SwapManager();  // finishes queued copies, then joins the worker
  SwapManager(const SwapManager&) = delete;
  SwapManager& operator=(const SwapManager&) = delete;

  // Session-level swaps (the session must not run a step until the ticket is ready).
  Result<SwapTicket> swap_out(InferenceSession& session);
  // `use`: kStepFollows when the session's step is issued right after (it is ordered
  // after the copy on the device, never waited for on the host); kAhead otherwise.
  Result<SwapTicket> swap_in(InferenceSession& session, SwapUse use);

  // The copy primitives the session-level swaps are made of, also used by the swap
  // benchmark: gather `spans` into one HostPool slice, scatter a slice back.
  // `slice` must hold the sum of the span sizes. The spans are read (gather) or written
  // (scatter) after the compute queue's work issued so far.
  SwapTicket gather(std::span<const ByteSpan> spans, std::byte* slice);
  SwapTicket scatter(std::byte* slice, std::span<const ByteSpan> spans, SwapUse use);

  SwapStats stats() const;
  HostPool& pool() { return pool_; }

 private:
  // One copy worker thread per direction (backends without queues of their own), so
  // a swap-out and a swap-in overlap.
  struct Worker {
    std::deque<std::packaged_task<Status()>> jobs;
    std::condition_variable wake;
    std::thread thread;
  };
  // Queues `job` on `worker`; the future is its result.
  std::shared_future<Status> enqueue(Worker& worker, std::function<Status()> job);
  // spans -> slice on the out worker (to_slice), or slice -> spans on the in worker.
  SwapTicket copy(std::span<const ByteSpan> spans, std::byte* slice, bool to_slice, SwapUse use);
  // Counts a finished copy of `bytes` that took `seconds` on its queue.
  void record(bool to_slice, size_t bytes, double seconds);
  void run_worker(Worker& worker);

  Backend& backend_;
  HostPool& pool_;
  DataSegment& data_;
  mutable std::mutex mutex_;  // guards both workers' queues, stopping_ and stats_
  bool stopping_ = false;
  SwapStats stats_;
  Worker out_, in_;
};

}  // namespace djinn
