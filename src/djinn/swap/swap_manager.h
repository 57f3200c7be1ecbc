// SwapManager: moves an idle session's KV cache between its Data-segment arena and a
// slice of the HostPool, on copy workers of its own (one per direction), so compute
// goes on meanwhile.
//
// Policy and contract:
//  - only the used part moves: rows [0, length) of every KV slot, packed back to back
//    in one HostPool slice (slot 0's rows, then slot 1's, ...);
//  - the HostPool is sliced, never allocated per swap; a pool without room refuses the
//    swap-out (counted) and the session stays resident: state is never dropped;
//  - swap_out frees the session's arena once the copy is done; swap_in takes a fresh
//    arena (the session's KV views move to it) and frees the slice;
//  - every call returns a SwapTicket the caller waits on before touching the session
//    (on the CPU backend the worker thread is the copy "stream" and the ticket its
//    completion event; on CUDA a stream and a cudaEvent).
// Threads: swap_out / swap_in from the thread that owns the sessions (the scheduler);
// the copies run on the worker; stats() from any thread.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
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

using SwapTicket = std::shared_future<Status>;

struct SwapStats {
  uint64_t swaps_out = 0, swaps_in = 0;
  uint64_t bytes_out = 0, bytes_in = 0;
  double seconds_out = 0, seconds_in = 0;  // copy time on the worker
  uint64_t refusals = 0;                   // swap-outs refused: the HostPool had no room
};
nlohmann::json to_json(const SwapStats& stats);

class SwapManager {
 public:
  // `backend` does the copies, on its kSwapOut / kSwapIn queues (one worker each).
  SwapManager(Backend& backend, HostPool& pool, DataSegment& data);
  ~SwapManager();  // finishes queued copies, then joins the worker
  SwapManager(const SwapManager&) = delete;
  SwapManager& operator=(const SwapManager&) = delete;

  // Session-level swaps (the session must not run a step until the ticket is ready).
  Result<SwapTicket> swap_out(InferenceSession& session);
  Result<SwapTicket> swap_in(InferenceSession& session);

  // The copy primitives the session-level swaps are made of, also used by the swap
  // benchmark: gather `spans` into one HostPool slice, scatter a slice back.
  // `slice` must hold the sum of the span sizes.
  SwapTicket gather(std::vector<ByteSpan> spans, std::byte* slice);
  SwapTicket scatter(std::byte* slice, std::vector<ByteSpan> spans);

  SwapStats stats() const;
  HostPool& pool() { return pool_; }

 private:
  // One copy worker per direction (CPU backend: a thread; CUDA: a stream), so a
  // swap-out and a swap-in overlap.
  struct Worker {
    std::deque<std::packaged_task<Status()>> jobs;
    std::condition_variable wake;
    std::thread thread;
  };
  SwapTicket enqueue(Worker& worker, std::function<Status()> job);
  // spans -> slice on the out worker (to_slice), or slice -> spans on the in worker.
  SwapTicket copy(std::vector<ByteSpan> spans, std::byte* slice, bool to_slice);
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
