// Executor: runs a Plan. Dispatch is two phases, timed apart by callers:
//   bind()    point every value of the plan at its memory — weights, the session's KV
//             slots, the step's io inputs, stack offsets inside the step's frame — and
//             resolve symbolic shapes to this step's seq / past;
//   execute() run the steps' kernels in order on the backend.
//
// Note [Cheap rebinding]: views are built once per plan; every op's inputs are
// pointers into them. A later bind() of the same plan rewrites only what changed:
// io inputs (every step), KV slots (when the session changes: GraphBindings::kv_id),
// weights (when the weight table changes: weights_id), stack values (when the frame
// base or seq changes). A decode
// step of the same session therefore rebinds two io views: dispatch costs a plan
// lookup and a few pointer writes, not a walk over the graph.
// Note [Step capture]: on a backend that can capture steps (CUDA graphs), the second
// execute() of the same binding state — plan, weight table id, KV table id, frame base,
// io input memory, symbols — captures the kernels and later ones replay them in one launch, saving a
// launch per op. Binding states with an unknown table id (0) are never captured:
// their pointers may change unseen. DJINN_CUDA_GRAPHS=0 turns capture off.
// Threads: one step at a time per Executor.
#pragma once

#include <memory>
#include <vector>

#include "djinn/backend/backend.h"
#include "djinn/exec/interpreter.h"
#include "djinn/meta/plan.h"
#include "djinn/meta/plan_cache.h"
#include "djinn/vmu/stack_segment.h"

namespace djinn {

class Executor {
 public:
  explicit Executor(Backend& backend);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  // `stack_base` holds at least plan->stack_peak_bytes (a StackFrame's base).
  Status bind(std::shared_ptr<const Plan> plan, const GraphBindings& bindings, std::byte* stack_base);
  // Runs the bound plan. Returns views of the plan's outputs (valid while the frame is),
  // in the backend's memory: read them with backend().download after synchronize().
  Result<std::vector<TensorView>> execute();
  Backend& backend() { return backend_; }
  void set_capture_enabled(bool enabled);
  size_t captures() const { return captures_.size(); }

 private:
  void build_views();
  Status run_steps();
  // What a capture depends on (Note [Step capture]).
  struct CaptureKey {
    const Plan* plan = nullptr;
    uint64_t weights_id = 0, kv_id = 0;
    std::byte* stack_base = nullptr;
    int64_t seq = -1, past = -1;
    std::vector<const void*> io;  // the io inputs' memory (on a device backend: the frame's staging)
    bool operator==(const CaptureKey&) const = default;
  };
  struct Capture {
    CaptureKey key;
    std::shared_ptr<const Plan> plan;  // keeps the key's plan address from being reused
    uint64_t id = 0;
  };
  static constexpr size_t kMaxCaptures = 4;
  // Binding states whose capture failed, and how often: tried again at most
  // kMaxCaptureAttempts times (a failure can be transient: a workspace that had to grow).
  static constexpr int kMaxCaptureAttempts = 2;
  std::vector<std::pair<CaptureKey, int>> failed_captures_;
  bool capture_attempts_left(const CaptureKey& key) const;
  void note_capture_failure(const CaptureKey& key);
  Status bind_table(Placement kind, std::span<const TensorView> bound, const SymbolBindings& symbols);

  Backend& backend_;
  std::shared_ptr<const Plan> plan_;
  std::vector<TensorView> views_;               // per value
  std::vector<const TensorView*> input_ptrs_;   // parallel to plan_->step_inputs, into views_
  std::vector<std::vector<ValueId>> by_kind_;   // value ids per Placement
  std::vector<ValueId> symbolic_stack_values_;  // stack values whose shape names a symbol
  bool kv_symbolic_ = false;                    // a KV slot's shape names a symbol
  // What the views are bound to now (nullptr / -1: nothing yet).
  uint64_t bound_weights_id_ = 0;
  uint64_t bound_kv_id_ = 0;
  std::byte* bound_stack_base_ = nullptr;
  SymbolBindings symbols_{-1, -1};
  bool capture_enabled_ = true;
  std::vector<Capture> captures_;  // most recently used first
  CaptureKey last_key_;            // the last execute()'s state, captured when seen again
};

struct PlannedStepTiming {
  double dispatch_us = 0;  // plan lookup (and build on a miss) + stack frame + binding
  double compute_us = 0;   // the kernels
};

// The planned path of one step, shared by sessions, batched decode and run_graph: the
// plan from `plans`, a frame of its peak on `stack` (held in `frame`, where the outputs
// live until it is popped; any frame `frame` held before is popped first), bind, execute,
// and wait for the backend (synchronize: kernel-reported data errors come back here).
// The io inputs are host memory; on a backend the host cannot address they are
// uploaded into the frame, past the plan's peak, before binding. `compute_us` includes
// the wait, so on a GPU it is the kernels' time, not their launch time.
Result<std::vector<TensorView>> run_planned_step(Executor& executor, PlanCache& plans, StackSegment& stack,
                                                 const Graph& graph, const GraphBindings& bindings, std::string_view who,
                                                 StackFrame& frame, PlannedStepTiming* timing = nullptr);

}  // namespace djinn
