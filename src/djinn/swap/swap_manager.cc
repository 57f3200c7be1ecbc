#include "djinn/swap/swap_manager.h"

#include <fmt/format.h>

#include <chrono>

#include "djinn/exec/inference_session.h"

namespace djinn {

nlohmann::json to_json(const SwapStats& s) {
  auto gbps = [](uint64_t bytes, double seconds) { return seconds > 0 ? static_cast<double>(bytes) / seconds / 1e9 : 0.0; };
  return {{"swaps_out", s.swaps_out},     {"swaps_in", s.swaps_in},       {"bytes_out", s.bytes_out},
          {"bytes_in", s.bytes_in},       {"seconds_out", s.seconds_out}, {"seconds_in", s.seconds_in},
          {"out_gbps", gbps(s.bytes_out, s.seconds_out)}, {"in_gbps", gbps(s.bytes_in, s.seconds_in)},
          {"refusals", s.refusals}};
}

SwapManager::SwapManager(Backend& backend, HostPool& pool, DataSegment& data)
    : backend_(backend), pool_(pool), data_(data) {
  out_.thread = std::thread([this] { run_worker(out_); });
  in_.thread = std::thread([this] { run_worker(in_); });
}

SwapManager::~SwapManager() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  out_.wake.notify_all();
  in_.wake.notify_all();
  out_.thread.join();
  in_.thread.join();
}

void SwapManager::run_worker(Worker& worker) {
  for (;;) {
    std::packaged_task<Status()> job;
    {
      std::unique_lock lock(mutex_);
      worker.wake.wait(lock, [&] { return stopping_ || !worker.jobs.empty(); });
      if (worker.jobs.empty()) return;  // stopping, and every queued copy is done
      job = std::move(worker.jobs.front());
      worker.jobs.pop_front();
    }
    job();
  }
}

SwapTicket SwapManager::enqueue(Worker& worker, std::function<Status()> job) {
  std::packaged_task<Status()> task(std::move(job));
  SwapTicket ticket = task.get_future().share();
  {
    std::lock_guard lock(mutex_);
    worker.jobs.push_back(std::move(task));
  }
  worker.wake.notify_one();
  return ticket;
}

SwapTicket SwapManager::copy(std::vector<ByteSpan> spans, std::byte* slice, bool to_slice) {
  return enqueue(to_slice ? out_ : in_, [this, spans = std::move(spans), slice, to_slice] {
    const auto start = std::chrono::steady_clock::now();
    std::vector<CopyRegion> regions;
    regions.reserve(spans.size());
    size_t at = 0;
    for (const ByteSpan& s : spans) {
      regions.push_back(to_slice ? CopyRegion{slice + at, s.data, s.bytes} : CopyRegion{s.data, slice + at, s.bytes});
      at += s.bytes;
    }
    const Status copied = backend_.copy(regions, to_slice ? CopyQueue::kSwapOut : CopyQueue::kSwapIn);
    if (!copied.ok()) return copied;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::lock_guard lock(mutex_);
    ++(to_slice ? stats_.swaps_out : stats_.swaps_in);
    (to_slice ? stats_.bytes_out : stats_.bytes_in) += at;
    (to_slice ? stats_.seconds_out : stats_.seconds_in) += seconds;
    return Status{};
  });
}

SwapTicket SwapManager::gather(std::vector<ByteSpan> spans, std::byte* slice) {
  return copy(std::move(spans), slice, /*to_slice=*/true);
}

SwapTicket SwapManager::scatter(std::byte* slice, std::vector<ByteSpan> spans) {
  return copy(std::move(spans), slice, /*to_slice=*/false);
}

Result<SwapTicket> SwapManager::swap_out(InferenceSession& session) {
  DJINN_RETURN_IF_ERROR(session.settle_swap());
  if (session.residency() != Residency::kResident || session.arena() == nullptr)
    return invalid_argument(fmt::format("swap-out of a session that is {}", residency_name(session.residency())));
  const size_t bytes = session.kv_used_bytes();
  Result<std::byte*> slice = pool_.allocate(std::max<size_t>(bytes, 1), session.owner());
  if (!slice.ok()) {  // no room: the session stays resident, nothing is lost
    std::lock_guard lock(mutex_);
    ++stats_.refusals;
    return slice.status();
  }
  SwapTicket ticket = gather(session.kv_used_spans(), *slice);
  session.begin_swap_out(ticket, *slice, pool_);
  return ticket;
}

Result<SwapTicket> SwapManager::swap_in(InferenceSession& session) {
  DJINN_RETURN_IF_ERROR(session.settle_swap());
  if (session.residency() != Residency::kSwapped)
    return invalid_argument(fmt::format("swap-in of a session that is {}", residency_name(session.residency())));
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<SessionArena> arena, data_.open_arena(session.owner()));
  // The arena is the session's from here (its KV views are laid out in it); the copy
  // then fills their used rows from the slice.
  DJINN_RETURN_IF_ERROR(session.adopt_arena(std::move(arena)));
  SwapTicket ticket = scatter(session.host_slice(), session.kv_used_spans());
  session.begin_swap_in(ticket);
  return ticket;
}

SwapStats SwapManager::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

}  // namespace djinn
