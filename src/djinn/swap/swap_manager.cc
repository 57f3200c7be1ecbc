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

void SwapTicket::finish(const Status& copied) const {
  std::call_once(state_->finished, [this, &copied] {
    if (state_->device != nullptr) state_->seconds = state_->device->elapsed_seconds();
    if (state_->on_finish && copied.ok()) state_->on_finish(state_->seconds);  // failed copies are not swaps
  });
}

bool SwapTicket::done() const {
  if (state_ == nullptr) return false;
  if (state_->inline_result) return true;  // finished (counted when it ran, if it succeeded)
  const bool finished = state_->device != nullptr
                            ? state_->device->done()
                            : state_->host.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  if (finished) finish(state_->device != nullptr ? state_->device->wait() : state_->host.get());
  return finished;
}

Status SwapTicket::wait() const {
  if (state_ == nullptr) return invalid_argument("waiting on a swap ticket that has no copy");
  if (state_->inline_result) return *state_->inline_result;
  Status status = state_->device != nullptr ? state_->device->wait() : state_->host.get();
  finish(status);
  return status;
}

Status SwapTicket::order_compute_after(Backend& backend) const {
  if (state_ == nullptr) return invalid_argument("ordering after a swap ticket that has no copy");
  if (state_->device != nullptr && !done()) return backend.compute_waits_for(*state_->device);
  return wait();
}

std::chrono::steady_clock::time_point SwapTicket::issued_at() const {
  return state_ != nullptr ? state_->issued_at : std::chrono::steady_clock::time_point{};
}

double SwapTicket::copy_seconds() const { return state_ != nullptr ? state_->seconds : 0.0; }

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

std::shared_future<Status> SwapManager::enqueue(Worker& worker, std::function<Status()> job) {
  std::packaged_task<Status()> task(std::move(job));
  std::shared_future<Status> done = task.get_future().share();
  {
    std::lock_guard lock(mutex_);
    worker.jobs.push_back(std::move(task));
  }
  worker.wake.notify_one();
  return done;
}

void SwapManager::record(bool to_slice, size_t bytes, double seconds) {
  std::lock_guard lock(mutex_);
  ++(to_slice ? stats_.swaps_out : stats_.swaps_in);
  (to_slice ? stats_.bytes_out : stats_.bytes_in) += bytes;
  (to_slice ? stats_.seconds_out : stats_.seconds_in) += seconds;
}

SwapTicket SwapManager::copy(std::span<const ByteSpan> spans, std::byte* slice, bool to_slice, SwapUse use) {
  std::vector<CopyRegion> regions;
  regions.reserve(spans.size());
  size_t total = 0;
  for (const ByteSpan& s : spans) {
    regions.push_back(to_slice ? CopyRegion{slice + total, s.data, s.bytes} : CopyRegion{s.data, slice + total, s.bytes});
    total += s.bytes;
  }
  const CopyQueue queue = to_slice ? CopyQueue::kSwapOut : CopyQueue::kSwapIn;
  SwapTicket ticket;
  ticket.state_ = std::make_shared<SwapTicket::State>();
  // Backend queues (CUDA streams): issued from here, no thread hop; counted when done.
  if (backend_.supports_async_copy()) {
    Result<std::shared_ptr<QueueEvent>> event = backend_.copy_async(regions, queue, use);
    if (!event.ok()) {
      ticket.state_->inline_result = event.status();
      return ticket;
    }
    ticket.state_->device = std::move(event).value();
    ticket.state_->on_finish = [this, to_slice, total](double seconds) { record(to_slice, total, seconds); };
    return ticket;
  }
  // Otherwise the copy is timed and counted by the thread that runs it.
  auto timed_copy = [this, regions = std::move(regions), queue, to_slice, total, state = ticket.state_] {
    const auto start = std::chrono::steady_clock::now();
    const Status copied = backend_.copy(regions, queue);
    if (copied.ok()) {
      state->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      record(to_slice, total, state->seconds);
    }
    return copied;
  };
  if (total <= kInlineCopyBytes) {  // small: the hand-off would cost more than the copy
    ticket.state_->inline_result = timed_copy();
  } else {
    ticket.state_->host = enqueue(to_slice ? out_ : in_, std::move(timed_copy));
  }
  return ticket;
}

SwapTicket SwapManager::gather(std::span<const ByteSpan> spans, std::byte* slice) {
  return copy(spans, slice, /*to_slice=*/true, SwapUse::kAhead);
}

SwapTicket SwapManager::scatter(std::byte* slice, std::span<const ByteSpan> spans, SwapUse use) {
  return copy(spans, slice, /*to_slice=*/false, use);
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

Result<SwapTicket> SwapManager::swap_in(InferenceSession& session, SwapUse use) {
  DJINN_RETURN_IF_ERROR(session.settle_swap());
  if (session.residency() != Residency::kSwapped)
    return invalid_argument(fmt::format("swap-in of a session that is {}", residency_name(session.residency())));
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<SessionArena> arena, data_.open_arena(session.owner()));
  // The arena is the session's from here (its KV views are laid out in it); the copy
  // then fills their used rows from the slice.
  DJINN_RETURN_IF_ERROR(session.adopt_arena(std::move(arena)));
  SwapTicket ticket = scatter(session.host_slice(), session.kv_used_spans(), use);
  session.begin_swap_in(ticket);
  return ticket;
}

SwapStats SwapManager::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

}  // namespace djinn
