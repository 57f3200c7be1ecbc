// InferenceSession: one sequence running on one model — its KV cache, the step
// graphs of its model (built once per phase and reused), and greedy generation.
//
// KV cache: one [capacity, n_kv_heads * head_dim] tensor per layer for K and one
// for V, in the model's dtype, in the graph's KV slot order. `length()` tokens are
// cached; a forward of n tokens fills rows [length, length + n).
//
// Two ways to run a step, the same kernels in the same order (bit-identical):
//  - direct (create): the Interpreter, KV and activations in plain backend memory —
//    the reference;
//  - planned (create_planned): KV in the session's arena (VMU Data segment),
//    activations in a frame of the VMU Stack, the step from the PlanCache, run by the
//    Executor. The Runtime makes these.
//
// Threads: one call at a time per session; sessions of one model may run on
// different threads if each has its own Backend.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <span>
#include <vector>

#include "djinn/backend/backend.h"
#include "djinn/core/status.h"
#include "djinn/exec/executor.h"
#include "djinn/exec/interpreter.h"
#include "djinn/meta/plan_cache.h"
#include "djinn/models/model.h"
#include "djinn/swap/swap_manager.h"
#include "djinn/vmu/data_segment.h"
#include "djinn/vmu/stack_segment.h"

namespace djinn {

struct ForwardResult {
  std::vector<float> logits;  // [rows, vocab] row-major; rows = tokens (all_logits) or 1
  int64_t rows = 0;
  int32_t next_token = -1;    // greedy choice after the last token
  double dispatch_us = 0;     // planned: plan lookup (+ build on a miss) + binding pointers
  double compute_us = 0;      // kernels
  // How long the step waited for a swap-in of this session still copying: on the host
  // (CPU backend), or on the device where the step was ordered after the copy (then
  // compute_us excludes it: the copy's device-timed end minus the step's start).
  double swap_wait_us = 0;
};

// Where a planned session's memory and plans come from (all owned elsewhere except
// the arena, which the session takes).
// Where a session's KV cache is (see swap/swap_manager.h).
enum class Residency : uint8_t { kResident, kSwappingOut, kSwapped, kSwappingIn };
const char* residency_name(Residency residency);

struct PlannedResources {
  std::unique_ptr<SessionArena> arena;
  StackSegment* stack = nullptr;
  PlanCache* plans = nullptr;
};

struct GenerateResult {
  std::vector<int32_t> new_tokens;          // max_new_tokens greedy tokens
  double prefill_ms = 0.0;                  // prompt forward, including its first token
  std::vector<double> decode_step_ms;       // one per decode step (max_new_tokens - 1 of them)
  double decode_ms_per_token() const;       // mean of decode_step_ms, 0 if none
};

class InferenceSession {
 public:
  // `capacity`: the most tokens this session may hold (prompt + generated),
  // at most the model's max_positions.
  static Result<std::unique_ptr<InferenceSession>> create(std::shared_ptr<const Model> model, Backend& backend,
                                                          int64_t capacity);
  // KV tensors are bump-allocated in `resources.arena`; out-of-memory if it is too small.
  static Result<std::unique_ptr<InferenceSession>> create_planned(std::shared_ptr<const Model> model, Backend& backend,
                                                                  int64_t capacity, PlannedResources resources);
  ~InferenceSession();

  // Runs `tokens` at positions [length, length + n) and appends their K/V.
  Result<ForwardResult> forward(std::span<const int32_t> tokens, bool all_logits = false);
  // Prefill `prompt` then greedy-decode; the KV cache keeps everything.
  Result<GenerateResult> generate(std::span<const int32_t> prompt, int64_t max_new_tokens);

  int64_t length() const { return length_; }
  // A step run outside the session (a batched decode step over several sessions) wrote
  // `tokens` more rows of this session's KV cache.
  void advance_length(int64_t tokens) {
    DJINN_CHECK(tokens >= 0 && length_ + tokens <= capacity_, "advance_length({}) past the capacity", tokens);
    length_ += tokens;
  }
  Status validate_step(std::span<const int32_t> tokens) const { return validate_tokens(tokens); }
  int64_t capacity() const { return capacity_; }
  size_t kv_bytes() const;
  // The KV tensors, slot order (layer 0 K, layer 0 V, ...).
  const std::vector<TensorView>& kv() const { return kv_; }
  // Changes whenever the KV views change (new arena): the executor's binding id.
  uint64_t kv_id() const { return kv_id_; }
  const SessionArena* arena() const { return resources_.arena.get(); }

  // ---- swapping (driven by the SwapManager; the owner thread calls settle_swap) ----
  Residency residency() const { return residency_; }
  // The used bytes of every KV slot: rows [0, length), slot order.
  std::vector<ByteSpan> kv_used_spans() const;
  size_t kv_used_bytes() const { return static_cast<size_t>(length_) * model_->kv_bytes_per_token(); }
  // A copy is in flight: `ticket` completes it; `slice` is the HostPool slice it uses.
  void begin_swap_out(SwapTicket ticket, std::byte* slice, HostPool& pool);
  // Swapped: lays the KV views out in `arena` (contents still in the HostPool slice).
  Status adopt_arena(std::unique_ptr<SessionArena> arena);
  void begin_swap_in(SwapTicket ticket);
  // Who the session is, for allocation messages ("session 3 (gpt2)").
  const std::string& owner() const { return owner_; }
  void set_owner(std::string owner) { owner_ = std::move(owner); }
  std::byte* host_slice() const { return host_slice_; }
  // A swap copy is in flight and has finished (settle_swap() will not block).
  bool swap_copy_done() const { return swap_ticket_.valid() && swap_ticket_.done(); }
  // The in-flight swap copy (invalid when none).
  const SwapTicket& swap_ticket() const { return swap_ticket_; }
  // Before a step: a swap-out in flight is settled (waited for); a swap-in in flight is
  // not waited for on the host — the step is ordered after its copy on the device
  // (SwapTicket::order_compute_after) and the session runs while still SWAPPING_IN;
  // settle_swap() later frees the HostPool slice.
  // `host_wait_us`, when given, receives the time spent waiting here.
  Status prepare_for_step(double* host_wait_us = nullptr);
  // Waits for an in-flight copy and finishes it: after a swap-out the arena goes back
  // to the Data segment; after a swap-in the HostPool slice is freed. No-op otherwise.
  Status settle_swap();
  const Model& model() const { return *model_; }
  const std::shared_ptr<const Model>& model_ptr() const { return model_; }
  // The step graph for (phase, all_logits), built on first use.
  const ModelGraph& step_graph(Phase phase, bool all_logits);

 private:
  InferenceSession(std::shared_ptr<const Model> model, Backend& backend, int64_t capacity);
  Status validate_tokens(std::span<const int32_t> tokens) const;
  // forward() but for settling a swap-in after a failed step.
  Result<ForwardResult> run_forward(std::span<const int32_t> tokens, bool all_logits);

  struct StepGraph {
    ModelGraph model_graph;
    std::vector<TensorView> weights;  // parallel to graph.weight_values()
    uint64_t weights_id = next_binding_id();
  };

  std::shared_ptr<const Model> model_;
  Result<std::vector<TensorView>> run_step(const ModelGraph& graph, const GraphBindings& bindings,
                                           ForwardResult& timing);

  Backend& backend_;
  Interpreter interpreter_;
  Executor executor_;
  PlannedResources resources_;  // empty in direct mode
  StackFrame frame_;            // planned: the running step's frame, popped when forward() returns
  int64_t capacity_;
  int64_t length_ = 0;
  std::vector<TensorView> kv_;  // slot order; never changes after creation
  uint64_t kv_id_ = next_binding_id();
  std::map<std::pair<Phase, bool>, StepGraph> graphs_;
  Residency residency_ = Residency::kResident;
  SwapTicket swap_ticket_;
  bool swap_in_ordered_ = false;  // steps are ordered after the in-flight swap-in's copy
  std::byte* host_slice_ = nullptr;
  HostPool* host_pool_ = nullptr;
  Status allocate_kv_in_arena();
  std::string owner_ = "a session";
};

}  // namespace djinn
