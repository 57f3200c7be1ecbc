#include "djinn/exec/executor.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <string_view>

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

const char* table_name(Placement kind) {
  switch (kind) {
    case Placement::kWeight: return "weight";
    case Placement::kKv: return "kv";
    case Placement::kIo: return "io";
    case Placement::kStack: return "stack";
    case Placement::kAlias: return "alias";
  }
  return "?";
}

}  // namespace

Executor::Executor(Backend& backend) : backend_(backend) {
  const char* env = std::getenv("DJINN_CUDA_GRAPHS");
  capture_enabled_ = backend.supports_capture() && !(env != nullptr && std::string_view(env) == "0");
}

Executor::~Executor() {
  for (const Capture& c : captures_) backend_.release_capture(c.id);
}

void Executor::set_capture_enabled(bool enabled) {
  capture_enabled_ = enabled && backend_.supports_capture();
  if (!capture_enabled_) {
    for (const Capture& c : captures_) backend_.release_capture(c.id);
    captures_.clear();
  }
}

void Executor::build_views() {
  const Plan& p = *plan_;
  views_.assign(p.placements.size(), TensorView{});
  by_kind_.assign(5, {});
  symbolic_stack_values_.clear();
  kv_symbolic_ = false;
  for (size_t v = 0; v < p.placements.size(); ++v) {
    by_kind_[static_cast<size_t>(p.placements[v].kind)].push_back(static_cast<ValueId>(v));
    const auto& dims = p.value_types[v].shape.dims;
    if (p.placements[v].kind == Placement::kStack &&
        std::any_of(dims.begin(), dims.end(), [](const Dim& d) { return d.is_symbolic(); }))
      symbolic_stack_values_.push_back(static_cast<ValueId>(v));
    if (p.placements[v].kind == Placement::kKv)
      kv_symbolic_ = kv_symbolic_ || std::any_of(dims.begin(), dims.end(), [](const Dim& d) { return d.is_symbolic(); });
    views_[v].lifetime = p.value_lifetimes[v];
  }
  input_ptrs_.resize(p.step_inputs.size());
  for (size_t i = 0; i < p.step_inputs.size(); ++i) input_ptrs_[i] = &views_[static_cast<size_t>(p.step_inputs[i])];
  bound_weights_id_ = 0;
  bound_kv_id_ = 0;
  bound_stack_base_ = nullptr;
  symbols_ = SymbolBindings{-1, -1};
}

Status Executor::bind_table(Placement kind, std::span<const TensorView> bound, const SymbolBindings& symbols) {
  const Plan& p = *plan_;
  for (ValueId v : by_kind_[static_cast<size_t>(kind)]) {
    const TensorView& view = bound[static_cast<size_t>(p.placements[static_cast<size_t>(v)].index)];
    const ValueType& type = p.value_types[static_cast<size_t>(v)];
    if (!matches(view, type, symbols))
      return invalid_argument(fmt::format("{} input {} is bound to {} {}, the plan needs {} {}", table_name(kind), v,
                                          dtype_name(view.dtype), to_string(view.shape), dtype_name(type.dtype),
                                          to_string(type.shape)));
    views_[static_cast<size_t>(v)] = view;
  }
  return {};
}

Status Executor::bind(std::shared_ptr<const Plan> plan, const GraphBindings& b, std::byte* stack_base) {
  if (plan != plan_) {
    plan_ = std::move(plan);
    build_views();
  }
  const Plan& p = *plan_;
  if (b.weights.size() != p.n_weights || b.kv.size() != p.n_kv || b.io_inputs.size() != p.n_io)
    return invalid_argument(fmt::format("plan needs {} weights, {} kv, {} io inputs; bound {}, {}, {}", p.n_weights, p.n_kv,
                                        p.n_io, b.weights.size(), b.kv.size(), b.io_inputs.size()));
  if (b.symbols.seq < 0 || b.symbols.past < 0 || b.symbols.seq > p.key.seq_bucket ||
      (p.key.past_bucket > 0 && b.symbols.past > p.key.past_bucket))
    return invalid_argument(fmt::format("step seq={} past={} is outside the plan's bucket (seq <= {})", b.symbols.seq,
                                        b.symbols.past, p.key.seq_bucket));
  // Only seq changes extents, unless the plan's activations depend on past too.
  const bool symbols_changed =
      b.symbols.seq != symbols_.seq || (p.key.past_bucket > 0 && b.symbols.past != symbols_.past);

  // Weights: once per (plan, weight table).
  if (b.weights_id == 0 || b.weights_id != bound_weights_id_) {
    bound_weights_id_ = 0;
    DJINN_RETURN_IF_ERROR(bind_table(Placement::kWeight, b.weights, b.symbols));
    bound_weights_id_ = b.weights_id;
  }
  // KV slots and their aliases: once per (plan, session), unless their shapes are symbolic.
  if (b.kv_id == 0 || b.kv_id != bound_kv_id_ || (symbols_changed && kv_symbolic_)) {
    bound_kv_id_ = 0;
    DJINN_RETURN_IF_ERROR(bind_table(Placement::kKv, b.kv, b.symbols));
    for (ValueId v : by_kind_[static_cast<size_t>(Placement::kAlias)])
      views_[static_cast<size_t>(v)] = views_[static_cast<size_t>(p.placements[static_cast<size_t>(v)].index)];
    bound_kv_id_ = b.kv_id;
  }
  // Io: every step.
  DJINN_RETURN_IF_ERROR(bind_table(Placement::kIo, b.io_inputs, b.symbols));
  // Stack: pointers when the frame moved, extents when the symbols changed.
  if (stack_base != bound_stack_base_) {
    for (ValueId v : by_kind_[static_cast<size_t>(Placement::kStack)]) {
      views_[static_cast<size_t>(v)].data = stack_base + p.placements[static_cast<size_t>(v)].offset;
    }
    bound_stack_base_ = stack_base;
  }
  if (symbols_changed) {
    if (symbols_.seq < 0)  // first bind of this plan: constant shapes too
      for (ValueId v : by_kind_[static_cast<size_t>(Placement::kStack)])
        resolve_into(views_[static_cast<size_t>(v)], p.value_types[static_cast<size_t>(v)], b.symbols);
    for (ValueId v : symbolic_stack_values_)
      resolve_into(views_[static_cast<size_t>(v)], p.value_types[static_cast<size_t>(v)], b.symbols);
  }
  symbols_ = b.symbols;
  return {};
}

bool Executor::capture_attempts_left(const CaptureKey& key) const {
  for (const auto& [failed, attempts] : failed_captures_)
    if (failed == key) return attempts < kMaxCaptureAttempts;
  return true;
}

void Executor::note_capture_failure(const CaptureKey& key) {
  for (auto& [failed, attempts] : failed_captures_)
    if (failed == key) {
      ++attempts;
      return;
    }
  constexpr size_t kMaxRemembered = 16;
  if (failed_captures_.size() == kMaxRemembered) failed_captures_.erase(failed_captures_.begin());
  failed_captures_.emplace_back(key, 1);
}

Status Executor::run_steps() {
  const Plan& p = *plan_;
  const std::span<const TensorView* const> all_inputs(input_ptrs_);
  for (size_t s = 0; s < p.steps.size(); ++s) {
    const PlanStep& step = p.steps[s];
    const Status status = backend_.run_op(step.op, step.attrs, all_inputs.subspan(step.first_input, step.input_count),
                                          views_[static_cast<size_t>(step.output)], symbols_);
    if (!status.ok()) return Status(status.code(), fmt::format("{} (step {}: {})", status.message(), s, op_name(step.op)));
  }
  return {};
}

Result<std::vector<TensorView>> Executor::execute() {
  DJINN_CHECK(plan_ != nullptr, "execute() before bind()");
  const Plan& p = *plan_;
  const bool capturable = capture_enabled_ && bound_weights_id_ != 0 && (bound_kv_id_ != 0 || p.n_kv == 0);
  bool ran = false;
  if (capturable) {
    CaptureKey key{plan_.get(), bound_weights_id_, bound_kv_id_, bound_stack_base_, symbols_.seq,
                   p.key.past_bucket > 0 ? symbols_.past : -1, {}};
    for (ValueId v : by_kind_[static_cast<size_t>(Placement::kIo)]) key.io.push_back(views_[static_cast<size_t>(v)].data);
    auto hit = std::find_if(captures_.begin(), captures_.end(), [&](const Capture& c) { return c.key == key; });
    if (hit != captures_.end()) {
      DJINN_ASSIGN_OR_RETURN(const bool replayed, backend_.replay(hit->id));
      if (replayed) {
        std::rotate(captures_.begin(), hit, hit + 1);
        ran = true;
      } else {  // the backend dropped it: run the ops, capture again next time
        backend_.release_capture(hit->id);
        captures_.erase(hit);
      }
    } else if (key == last_key_ && capture_attempts_left(key)) {  // seen twice: capture it, then launch it
      Result<uint64_t> captured = [&]() -> Result<uint64_t> {
        DJINN_RETURN_IF_ERROR(backend_.begin_capture());
        const Status steps = run_steps();
        if (!steps.ok()) {
          backend_.abort_capture();
          return steps;
        }
        return backend_.end_capture();
      }();
      if (captured.ok()) {
        if (captures_.size() == kMaxCaptures) {
          backend_.release_capture(captures_.back().id);
          captures_.pop_back();
        }
        captures_.insert(captures_.begin(), Capture{key, plan_, *captured});
        DJINN_ASSIGN_OR_RETURN(ran, backend_.replay(*captured));
        if (!ran) {  // dropped at once: forget it
          backend_.release_capture(*captured);
          captures_.erase(captures_.begin());
        }
      } else {  // a failed capture ran nothing: the ops run below, uncaptured
        note_capture_failure(key);
      }
    }
    last_key_ = std::move(key);
  }
  if (!ran) DJINN_RETURN_IF_ERROR(run_steps());
  std::vector<TensorView> outputs;
  outputs.reserve(p.outputs.size());
  for (ValueId id : p.outputs) outputs.push_back(views_[static_cast<size_t>(id)]);
  return outputs;
}

Result<std::vector<TensorView>> run_planned_step(Executor& executor, PlanCache& plans, StackSegment& stack,
                                                 const Graph& graph, const GraphBindings& bindings, std::string_view who,
                                                 StackFrame& frame, PlannedStepTiming* timing) {
  using Clock = std::chrono::steady_clock;
  frame.pop();  // frames nest LIFO: the old one goes before the new one is pushed
  const auto start = Clock::now();
  DJINN_ASSIGN_OR_RETURN(std::shared_ptr<const Plan> plan, plans.get(graph, bindings.symbols));
  Backend& backend = executor.backend();
  if (backend.host_addressable()) {
    DJINN_ASSIGN_OR_RETURN(frame, stack.push(plan->stack_peak_bytes, who));
    DJINN_RETURN_IF_ERROR(executor.bind(std::move(plan), bindings, frame.base()));
  } else {
    // Io staging: each io input's bytes go to the frame's tail, at offsets 256-byte
    // aligned from the frame's base (itself 64-byte aligned).
    constexpr size_t kStagingAlignment = 256;
    auto align = [](size_t n) { return (n + kStagingAlignment - 1) / kStagingAlignment * kStagingAlignment; };
    size_t frame_bytes = align(plan->stack_peak_bytes);
    for (const TensorView& io : bindings.io_inputs) frame_bytes += align(io.nbytes());
    DJINN_ASSIGN_OR_RETURN(frame, stack.push(frame_bytes, who));
    std::vector<TensorView> staged(bindings.io_inputs.begin(), bindings.io_inputs.end());
    std::vector<CopyRegion> uploads;
    size_t at = align(plan->stack_peak_bytes);
    for (TensorView& io : staged) {
      if (!io.is_contiguous()) return invalid_argument("io inputs must be contiguous");
      uploads.push_back(CopyRegion{frame.base() + at, io.data, io.nbytes()});
      io.data = frame.base() + at;
      at += align(io.nbytes());
    }
    DJINN_RETURN_IF_ERROR(backend.copy(uploads, CopyQueue::kCompute));
    GraphBindings on_device = bindings;
    on_device.io_inputs = staged;
    DJINN_RETURN_IF_ERROR(executor.bind(std::move(plan), on_device, frame.base()));
  }
  const auto bound = Clock::now();
  Result<std::vector<TensorView>> outputs = executor.execute();
  if (outputs.ok()) {
    const Status finished = backend.synchronize();
    if (!finished.ok()) outputs = finished;
  } else {
    (void)backend.synchronize();  // what was issued must finish before the frame is reused
  }
  if (timing != nullptr) {
    timing->dispatch_us = std::chrono::duration<double, std::micro>(bound - start).count();
    timing->compute_us = std::chrono::duration<double, std::micro>(Clock::now() - bound).count();
  }
  return outputs;
}

}  // namespace djinn
