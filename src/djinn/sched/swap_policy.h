// SwapPolicy: when an idle session's KV cache should leave the device and when it
// should come back. Pure decisions: the caller reports what happens (signals, steps,
// swap completions) with the time it happened, and asks what to do at a given time,
// so tests drive it with a controllable clock.
//
//   proactive  IO_WAIT swaps the session out at once; with an estimated resume time,
//              the swap-in starts early enough to finish before it (the margin is the
//              session's bytes over the measured swap-in speed, plus a safety slack);
//              COMPUTE swaps in if the session is still out.
//   reactive   signals are ignored; a session idle longer than idle_timeout_s is
//              swapped out.
//   none       never swaps.
//   lru        like none, until memory runs short: then the least recently used idle
//              session is swapped out (what reactive serving engines do).
// A session that is swapped out and asked to run is swapped in by the runtime itself
// (implicitly), whatever the policy.
// Threads: not thread-safe; the scheduler owns it.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "djinn/core/status.h"

namespace djinn {

enum class SwapPolicyKind : uint8_t { kProactive, kReactive, kNone, kLru };
Result<SwapPolicyKind> parse_swap_policy(const std::string& name);
const char* swap_policy_name(SwapPolicyKind kind);

struct SwapDecision {
  enum class Action : uint8_t { kSwapOut, kSwapIn };
  Action action;
  int64_t session;
};

class SwapPolicy {
 public:
  using Seconds = double;  // a point on the caller's clock

  SwapPolicy(SwapPolicyKind kind, Seconds idle_timeout_s, double swap_in_gbps_guess = 10.0);

  SwapPolicyKind kind() const { return kind_; }

  // What the policy is told.
  void session_opened(int64_t session, Seconds now);
  void session_closed(int64_t session);
  void session_ran(int64_t session, Seconds now);  // a step ran; the session is resident
  void signal_io_wait(int64_t session, Seconds now, std::optional<double> estimated_resume_ms);
  void signal_compute(int64_t session, Seconds now);
  void swapped_out(int64_t session);
  void swapped_in(int64_t session, size_t bytes, Seconds took);  // updates the measured speed
  void set_kv_bytes(int64_t session, size_t bytes);
  void swap_failed(int64_t session);  // a decided swap did not happen: decide again later
  // Where the session's KV cache really is now (after a request that may have swapped
  // it in, failed or not): the policy's view follows, pending requests are dropped.
  void sync(int64_t session, bool resident);
  // A busy session (a Generate in flight) is neither swapped nor evicted.
  void set_busy(int64_t session, bool busy);

  // What to do now (swap-outs first). Reports each decision once.
  std::vector<SwapDecision> decide(Seconds now);
  // lru: the idle resident session to evict when memory runs short, if any.
  std::optional<int64_t> eviction_candidate() const;

  // Swap-in speed measured so far (bytes / second) and the resulting margin for a session.
  double swap_in_bytes_per_second() const { return swap_in_bytes_per_s_; }
  Seconds swap_in_margin(int64_t session) const;

 private:
  struct Record {
    bool resident = true;
    bool io_wait = false;
    Seconds last_active = 0;
    std::optional<Seconds> resume_at;  // IO_WAIT with an estimate
    size_t kv_bytes = 0;
    bool out_requested = false, in_requested = false;
    bool busy = false;
  };

  SwapPolicyKind kind_;
  Seconds idle_timeout_s_;
  double swap_in_bytes_per_s_;
  std::map<int64_t, Record> sessions_;
};

}  // namespace djinn
