// Executor: runs a Plan. Dispatch is two phases, timed apart by callers:
//   bind()    point every value of the plan at its memory — weights, the session's KV
//             slots, the step's io inputs, stack offsets inside the step's frame — and
//             resolve symbolic shapes to this step's seq / past;
//   execute() run the steps' kernels in order on the backend.
// Binding reuses the views of the previous step when the plan is the same (the
// common decode case), so it only rewrites pointers and symbolic extents.
// Threads: one step at a time per Executor.
#pragma once

#include <memory>
#include <vector>

#include "djinn/backend/backend.h"
#include "djinn/exec/interpreter.h"
#include "djinn/meta/plan.h"

namespace djinn {

class Executor {
 public:
  explicit Executor(Backend& backend) : backend_(backend) {}

  // `stack_base` holds at least plan->stack_peak_bytes (a StackFrame's base).
  Status bind(std::shared_ptr<const Plan> plan, const GraphBindings& bindings, std::byte* stack_base);
  // Runs the bound plan. Returns views of the plan's outputs (valid while the frame is).
  Result<std::vector<TensorView>> execute();

 private:
  Status validate(const GraphBindings& bindings, bool check_weights) const;

  Backend& backend_;
  std::shared_ptr<const Plan> plan_;
  const TensorView* bound_weights_ = nullptr;  // weights validated for plan_
  SymbolBindings symbols_;
  std::vector<TensorView> views_;        // per value
  std::vector<TensorView> input_views_;  // parallel to plan_->step_inputs
  std::vector<TensorView> output_views_; // per step
};

}  // namespace djinn
