#include "djinn/exec/executor.h"

#include <fmt/format.h>

namespace djinn {
namespace {

// Resolves `type` under `symbols` into `view` in place (no allocation once sized).
void resolve_into(TensorView& view, const ValueType& type, const SymbolBindings& symbols) {
  const size_t rank = type.shape.rank();
  view.shape.resize(rank);
  view.strides.resize(rank);
  int64_t stride = 1;
  for (size_t i = rank; i-- > 0;) {
    view.shape[i] = type.shape.dims[i].resolve(symbols);
    view.strides[i] = stride;
    stride *= view.shape[i];
  }
  view.dtype = type.dtype;
}

bool matches(const TensorView& bound, const ValueType& type, const SymbolBindings& symbols) {
  if (bound.dtype != type.dtype || bound.shape.size() != type.shape.rank()) return false;
  for (size_t i = 0; i < bound.shape.size(); ++i)
    if (bound.shape[i] != type.shape.dims[i].resolve(symbols)) return false;
  return bound.data != nullptr || bound.numel() == 0;
}

}  // namespace

Status Executor::validate(const GraphBindings& b, bool check_weights) const {
  const Plan& plan = *plan_;
  if (b.weights.size() != plan.n_weights || b.kv.size() != plan.n_kv || b.io_inputs.size() != plan.n_io)
    return invalid_argument(fmt::format("plan needs {} weights, {} kv, {} io inputs; bound {}, {}, {}", plan.n_weights,
                                        plan.n_kv, plan.n_io, b.weights.size(), b.kv.size(), b.io_inputs.size()));
  if (b.symbols.seq > plan.key.seq_bucket || b.symbols.seq < 0 || b.symbols.past < 0 ||
      (plan.key.past_bucket > 0 && b.symbols.past > plan.key.past_bucket))
    return invalid_argument(fmt::format("step seq={} past={} is outside the plan's bucket seq<={}", b.symbols.seq,
                                        b.symbols.past, plan.key.seq_bucket));
  for (size_t v = 0; v < plan.placements.size(); ++v) {
    const ValuePlacement& p = plan.placements[v];
    const TensorView* bound = p.kind == Placement::kKv   ? &b.kv[static_cast<size_t>(p.index)]
                              : p.kind == Placement::kIo ? &b.io_inputs[static_cast<size_t>(p.index)]
                              : (p.kind == Placement::kWeight && check_weights) ? &b.weights[static_cast<size_t>(p.index)]
                                                                                 : nullptr;
    if (bound != nullptr && !matches(*bound, plan.value_types[v], b.symbols))
      return invalid_argument(fmt::format("input {} is bound to {} {}, the plan needs {} {}", v, dtype_name(bound->dtype),
                                          to_string(bound->shape), dtype_name(plan.value_types[v].dtype),
                                          to_string(plan.value_types[v].shape)));
  }
  return {};
}

Status Executor::bind(std::shared_ptr<const Plan> plan, const GraphBindings& b, std::byte* stack_base) {
  const bool new_plan = plan != plan_;
  if (new_plan) {
    plan_ = std::move(plan);
    bound_weights_ = nullptr;
    views_.assign(plan_->placements.size(), TensorView{});
    input_views_.assign(plan_->step_inputs.size(), TensorView{});
    output_views_.assign(plan_->steps.size(), TensorView{});
  }
  const bool check_weights = bound_weights_ != b.weights.data();
  DJINN_RETURN_IF_ERROR(validate(b, check_weights));
  bound_weights_ = b.weights.data();
  symbols_ = b.symbols;

  const Plan& p = *plan_;
  for (size_t v = 0; v < p.placements.size(); ++v) {
    const ValuePlacement& placement = p.placements[v];
    TensorView& view = views_[v];
    switch (placement.kind) {
      case Placement::kWeight: view = b.weights[static_cast<size_t>(placement.index)]; break;
      case Placement::kKv: view = b.kv[static_cast<size_t>(placement.index)]; break;
      case Placement::kIo: view = b.io_inputs[static_cast<size_t>(placement.index)]; break;
      case Placement::kAlias: view = views_[static_cast<size_t>(placement.index)]; break;
      case Placement::kStack:
        resolve_into(view, p.value_types[v], symbols_);
        view.data = stack_base + placement.offset;
        view.lifetime = p.value_lifetimes[v];
        break;
    }
  }
  for (size_t i = 0; i < p.step_inputs.size(); ++i) input_views_[i] = views_[static_cast<size_t>(p.step_inputs[i])];
  for (size_t s = 0; s < p.steps.size(); ++s) output_views_[s] = views_[static_cast<size_t>(p.steps[s].output)];
  return {};
}

Result<std::vector<TensorView>> Executor::execute() {
  DJINN_CHECK(plan_ != nullptr, "execute() before bind()");
  const Plan& p = *plan_;
  const std::span<const TensorView> all_inputs(input_views_);
  for (size_t s = 0; s < p.steps.size(); ++s) {
    const PlanStep& step = p.steps[s];
    const Status status = backend_.run_op(step.op, step.attrs, all_inputs.subspan(step.first_input, step.input_count),
                                          output_views_[s], symbols_);
    if (!status.ok()) return Status(status.code(), fmt::format("{} (step {}: {})", status.message(), s, op_name(step.op)));
  }
  std::vector<TensorView> outputs;
  outputs.reserve(p.outputs.size());
  for (ValueId id : p.outputs) outputs.push_back(views_[static_cast<size_t>(id)]);
  return outputs;
}

}  // namespace djinn
