#include "djinn/sched/swap_policy.h"

#include <fmt/format.h>

namespace djinn {
namespace {
constexpr double kSafetySlackS = 0.020;  // added to every swap-in margin: wake-ups, queueing, a scheduler tick
}

Result<SwapPolicyKind> parse_swap_policy(const std::string& name) {
  for (SwapPolicyKind k : {SwapPolicyKind::kProactive, SwapPolicyKind::kReactive, SwapPolicyKind::kNone, SwapPolicyKind::kLru})
    if (name == swap_policy_name(k)) return k;
  return invalid_argument(fmt::format("unknown policy '{}' (proactive, reactive, none, lru)", name));
}

const char* swap_policy_name(SwapPolicyKind kind) {
  switch (kind) {
    case SwapPolicyKind::kProactive: return "proactive";
    case SwapPolicyKind::kReactive: return "reactive";
    case SwapPolicyKind::kNone: return "none";
    case SwapPolicyKind::kLru: return "lru";
  }
  return "?";
}

SwapPolicy::SwapPolicy(SwapPolicyKind kind, Seconds idle_timeout_s, double swap_in_gbps_guess)
    : kind_(kind), idle_timeout_s_(idle_timeout_s), swap_in_bytes_per_s_(swap_in_gbps_guess * 1e9) {}

void SwapPolicy::session_opened(int64_t session, Seconds now) { sessions_[session] = Record{true, false, now, {}, 0, false, false}; }
void SwapPolicy::session_closed(int64_t session) { sessions_.erase(session); }

void SwapPolicy::session_ran(int64_t session, Seconds now) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  it->second.resident = true;
  it->second.last_active = now;
  it->second.in_requested = false;
  it->second.out_requested = false;
}

void SwapPolicy::signal_io_wait(int64_t session, Seconds now, std::optional<double> estimated_resume_ms) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  it->second.io_wait = true;
  it->second.last_active = now;
  it->second.resume_at.reset();
  if (estimated_resume_ms && *estimated_resume_ms > 0) it->second.resume_at = now + *estimated_resume_ms / 1e3;
}

void SwapPolicy::signal_compute(int64_t session, Seconds now) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  it->second.io_wait = false;
  it->second.resume_at.reset();
  it->second.last_active = now;
}

void SwapPolicy::swapped_out(int64_t session) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  it->second.resident = false;
  it->second.out_requested = false;
}

void SwapPolicy::swapped_in(int64_t session, size_t bytes, Seconds took) {
  auto it = sessions_.find(session);
  if (it != sessions_.end()) {
    it->second.resident = true;
    it->second.in_requested = false;
  }
  if (took > 0 && bytes >= (size_t{1} << 20))  // small copies measure latency, not speed
    swap_in_bytes_per_s_ = 0.8 * swap_in_bytes_per_s_ + 0.2 * (static_cast<double>(bytes) / took);
}

void SwapPolicy::swap_failed(int64_t session) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  it->second.out_requested = false;
  it->second.in_requested = false;
}

void SwapPolicy::sync(int64_t session, bool resident) {
  auto it = sessions_.find(session);
  if (it == sessions_.end()) return;
  it->second.resident = resident;
  it->second.out_requested = false;
  it->second.in_requested = false;
}

void SwapPolicy::set_busy(int64_t session, bool busy) {
  auto it = sessions_.find(session);
  if (it != sessions_.end()) it->second.busy = busy;
}

void SwapPolicy::set_kv_bytes(int64_t session, size_t bytes) {
  auto it = sessions_.find(session);
  if (it != sessions_.end()) it->second.kv_bytes = bytes;
}

SwapPolicy::Seconds SwapPolicy::swap_in_margin(int64_t session) const {
  auto it = sessions_.find(session);
  const size_t bytes = it == sessions_.end() ? 0 : it->second.kv_bytes;
  return static_cast<double>(bytes) / swap_in_bytes_per_s_ + kSafetySlackS;
}

std::vector<SwapDecision> SwapPolicy::decide(Seconds now) {
  std::vector<SwapDecision> out, in;
  for (auto& [id, r] : sessions_) {
    if (r.busy) continue;
    switch (kind_) {
      case SwapPolicyKind::kProactive:
        if (r.resident && r.io_wait && !r.out_requested && !(r.resume_at && *r.resume_at - swap_in_margin(id) <= now)) {
          r.out_requested = true;
          out.push_back({SwapDecision::Action::kSwapOut, id});
        } else if (!r.resident && !r.in_requested &&
                   (!r.io_wait || (r.resume_at && now >= *r.resume_at - swap_in_margin(id)))) {
          r.in_requested = true;
          in.push_back({SwapDecision::Action::kSwapIn, id});
        }
        break;
      case SwapPolicyKind::kReactive:
        if (r.resident && !r.out_requested && now - r.last_active > idle_timeout_s_) {
          r.out_requested = true;
          out.push_back({SwapDecision::Action::kSwapOut, id});
        }
        break;
      case SwapPolicyKind::kNone:
      case SwapPolicyKind::kLru: break;
    }
  }
  out.insert(out.end(), in.begin(), in.end());
  return out;
}

std::optional<int64_t> SwapPolicy::eviction_candidate() const {
  std::optional<int64_t> best;
  Seconds oldest = 0;
  for (const auto& [id, r] : sessions_) {
    if (!r.resident || r.out_requested || r.busy) continue;
    if (!best || r.last_active < oldest) {
      best = id;
      oldest = r.last_active;
    }
  }
  return best;
}

}  // namespace djinn
