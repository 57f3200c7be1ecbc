#include "djinn/exec/inference_session.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <numeric>

namespace djinn {
namespace {
constexpr size_t kKvAlignment = 64;  // bytes

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}
}  // namespace

double GenerateResult::decode_ms_per_token() const {
  if (decode_step_ms.empty()) return 0.0;
  return std::accumulate(decode_step_ms.begin(), decode_step_ms.end(), 0.0) / static_cast<double>(decode_step_ms.size());
}

Result<std::unique_ptr<InferenceSession>> InferenceSession::create(std::shared_ptr<const Model> model, Backend& backend,
                                                                   int64_t capacity) {
  const ModelConfig& config = model->config();
  if (capacity <= 0 || capacity > config.max_positions)
    return out_of_range(fmt::format("a session of {} tokens does not fit model {} (max context {} tokens)", capacity,
                                    config.name, config.max_positions));
  std::unique_ptr<InferenceSession> session(new InferenceSession(std::move(model), backend, capacity));
  const Shape shape{capacity, config.n_kv_heads * config.head_dim};
  for (int64_t slot = 0; slot < 2 * config.n_layers; ++slot) {
    TensorView view = TensorView::contiguous(nullptr, shape, session->model_->dtype(), LifetimeClass::kKv);
    view.data = backend.allocate(view.nbytes(), kKvAlignment);
    if (view.data == nullptr) return out_of_memory(fmt::format("session KV cache: {} bytes for slot {}", view.nbytes(), slot));
    session->kv_.push_back(view);
    DJINN_RETURN_IF_ERROR(backend.zero(view.data, view.nbytes()));
  }
  return session;
}

Result<std::unique_ptr<InferenceSession>> InferenceSession::create_planned(std::shared_ptr<const Model> model,
                                                                           Backend& backend, int64_t capacity,
                                                                           PlannedResources resources) {
  DJINN_CHECK(resources.arena != nullptr && resources.stack != nullptr && resources.plans != nullptr,
              "create_planned needs an arena, a stack and a plan cache");
  const ModelConfig& config = model->config();
  if (capacity <= 0 || capacity > config.max_positions)
    return out_of_range(fmt::format("a session of {} tokens does not fit model {} (max context {} tokens)", capacity,
                                    config.name, config.max_positions));
  std::unique_ptr<InferenceSession> session(new InferenceSession(std::move(model), backend, capacity));
  session->resources_ = std::move(resources);
  DJINN_RETURN_IF_ERROR(session->allocate_kv_in_arena());
  return session;
}

const char* residency_name(Residency residency) {
  switch (residency) {
    case Residency::kResident: return "RESIDENT";
    case Residency::kSwappingOut: return "SWAPPING_OUT";
    case Residency::kSwapped: return "SWAPPED";
    case Residency::kSwappingIn: return "SWAPPING_IN";
  }
  return "?";
}

Status InferenceSession::allocate_kv_in_arena() {
  const ModelConfig& config = model_->config();
  const Shape shape{capacity_, config.n_kv_heads * config.head_dim};
  kv_.clear();
  for (int64_t slot = 0; slot < 2 * config.n_layers; ++slot) {
    TensorView view = TensorView::contiguous(nullptr, shape, model_->dtype(), LifetimeClass::kKv);
    DJINN_ASSIGN_OR_RETURN(std::byte * data,
                           resources_.arena->allocate(view.nbytes(), kKvAlignment, fmt::format("KV slot {}", slot)));
    view.data = data;
    kv_.push_back(std::move(view));
  }
  kv_id_ = next_binding_id();  // new memory: the executor must rebind
  return {};
}

std::vector<ByteSpan> InferenceSession::kv_used_spans() const {
  std::vector<ByteSpan> spans;
  for (const TensorView& slot : kv_)
    spans.push_back(ByteSpan{static_cast<std::byte*>(slot.data),
                             static_cast<size_t>(length_ * slot.strides[0]) * dtype_size(slot.dtype)});
  return spans;
}

void InferenceSession::begin_swap_out(SwapTicket ticket, std::byte* slice, HostPool& pool) {
  DJINN_CHECK(residency_ == Residency::kResident && resources_.arena != nullptr, "swap-out of a session that is {}",
              residency_name(residency_));
  swap_ticket_ = std::move(ticket);
  host_slice_ = slice;
  host_pool_ = &pool;
  residency_ = Residency::kSwappingOut;
}

Status InferenceSession::adopt_arena(std::unique_ptr<SessionArena> arena) {
  DJINN_CHECK(residency_ == Residency::kSwapped && resources_.arena == nullptr, "adopt_arena of a session that is {}",
              residency_name(residency_));
  resources_.arena = std::move(arena);
  const Status laid_out = allocate_kv_in_arena();
  if (!laid_out.ok()) {
    kv_.clear();
    resources_.arena.reset();
  }
  return laid_out;
}

void InferenceSession::begin_swap_in(SwapTicket ticket) {
  DJINN_CHECK(residency_ == Residency::kSwapped && resources_.arena != nullptr, "begin_swap_in without an arena");
  swap_ticket_ = std::move(ticket);
  residency_ = Residency::kSwappingIn;
}

Status InferenceSession::prepare_for_step(double* host_wait_us) {
  const auto start = std::chrono::steady_clock::now();
  Status status;
  if (residency_ == Residency::kSwappingIn && !swap_ticket_.done()) {
    if (!swap_in_ordered_) status = swap_ticket_.order_compute_after(backend_);
    if (status.ok()) swap_in_ordered_ = true;
  } else {
    status = settle_swap();
  }
  if (host_wait_us != nullptr)
    *host_wait_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
  return status;
}

Status InferenceSession::settle_swap() {
  if (residency_ != Residency::kSwappingOut && residency_ != Residency::kSwappingIn) return {};
  const Status copied = swap_ticket_.wait();
  swap_ticket_ = {};
  swap_in_ordered_ = false;
  if (residency_ == Residency::kSwappingOut) {
    if (!copied.ok()) {  // the copy failed: keep the state where it is, in the arena
      host_pool_->free(host_slice_);
      host_slice_ = nullptr;
      residency_ = Residency::kResident;
      return copied;
    }
    kv_.clear();
    resources_.arena.reset();  // back to the Data segment
    residency_ = Residency::kSwapped;
    return {};
  }
  if (!copied.ok()) {  // the copy back failed: the state is still in the HostPool slice
    kv_.clear();
    resources_.arena.reset();
    residency_ = Residency::kSwapped;
    return copied;
  }
  host_pool_->free(host_slice_);
  host_slice_ = nullptr;
  residency_ = Residency::kResident;
  return {};
}

InferenceSession::InferenceSession(std::shared_ptr<const Model> model, Backend& backend, int64_t capacity)
    : model_(std::move(model)), backend_(backend), interpreter_(backend), executor_(backend), capacity_(capacity) {}

InferenceSession::~InferenceSession() {
  if (residency_ == Residency::kSwappingOut || residency_ == Residency::kSwappingIn) (void)swap_ticket_.wait();
  if (host_slice_ != nullptr) host_pool_->free(host_slice_);
  frame_.pop();
  if (resources_.arena == nullptr)
    for (TensorView& view : kv_) backend_.deallocate(view.data);
}

Result<std::vector<TensorView>> InferenceSession::run_step(const ModelGraph& graph, const GraphBindings& bindings,
                                                           ForwardResult& timing) {
  using Clock = std::chrono::steady_clock;
  if (resources_.arena == nullptr) {
    const auto start = Clock::now();
    Result<std::vector<TensorView>> outputs = interpreter_.run(graph.graph, bindings);
    timing.compute_us = std::chrono::duration<double, std::micro>(Clock::now() - start).count();
    return outputs;
  }
  PlannedStepTiming planned;
  Result<std::vector<TensorView>> outputs = run_planned_step(executor_, *resources_.plans, *resources_.stack, graph.graph,
                                                             bindings, model_->config().name, frame_, &planned);
  timing.dispatch_us = planned.dispatch_us;
  timing.compute_us = planned.compute_us;
  return outputs;
}

size_t InferenceSession::kv_bytes() const {
  size_t total = 0;
  for (const TensorView& view : kv_) total += view.nbytes();
  return total;
}

const ModelGraph& InferenceSession::step_graph(Phase phase, bool all_logits) {
  auto key = std::make_pair(phase, all_logits);
  auto it = graphs_.find(key);
  if (it != graphs_.end()) return it->second.model_graph;
  GraphOptions options;
  options.phase = phase;
  options.kv_capacity = capacity_;
  options.all_logits = all_logits;
  options.weight_dtype = options.kv_dtype = model_->dtype();
  StepGraph step{build_model_graph(model_->config(), options), {}};
  for (ValueId id : step.model_graph.graph.weight_values()) {
    Result<TensorView> weight = model_->weight(step.model_graph.graph.value(id).name);
    DJINN_ASSERT(weight.ok(), "{}", weight.status().to_string());  // the model was built from the same specs
    step.weights.push_back(*weight);
  }
  return graphs_.emplace(key, std::move(step)).first->second.model_graph;
}

Status InferenceSession::validate_tokens(std::span<const int32_t> tokens) const {
  const bool ordered_swap_in = residency_ == Residency::kSwappingIn && swap_in_ordered_;
  if (residency_ != Residency::kResident && !ordered_swap_in)
    return unavailable(fmt::format("the session's KV cache is {}: swap it in first", residency_name(residency_)));
  if (tokens.empty()) return invalid_argument("no tokens to run");
  const int64_t vocab = model_->config().vocab_size;
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      return out_of_range(fmt::format("token id {} at index {} is outside the vocabulary [0, {})", tokens[i], i, vocab));
  const auto n = static_cast<int64_t>(tokens.size());
  if (length_ + n > capacity_)
    return out_of_range(fmt::format("{} tokens after the {} already cached exceed the session's context of {} tokens", n,
                                    length_, capacity_));
  return {};
}

Result<ForwardResult> InferenceSession::forward(std::span<const int32_t> tokens, bool all_logits) {
  Result<ForwardResult> result = run_forward(tokens, all_logits);
  // A step that failed while ordered after a swap-in: settle the copy, so the session
  // is RESIDENT or (the copy failed: its error says why the step did) SWAPPED again.
  if (!result.ok() && residency_ == Residency::kSwappingIn) DJINN_RETURN_IF_ERROR(settle_swap());
  return result;
}

Result<ForwardResult> InferenceSession::run_forward(std::span<const int32_t> tokens, bool all_logits) {
  using Clock = std::chrono::steady_clock;
  double host_wait_us = 0;
  DJINN_RETURN_IF_ERROR(prepare_for_step(&host_wait_us));  // a swap-in in flight: ordered after it on the device
  // Kept for the swap-wait measurement below (settle_swap may run meanwhile).
  const SwapTicket ordered_after = swap_in_ordered_ ? swap_ticket_ : SwapTicket{};
  const auto step_start = Clock::now();
  DJINN_RETURN_IF_ERROR(validate_tokens(tokens));
  const auto n = static_cast<int64_t>(tokens.size());
  const Phase phase = (n == 1 && !all_logits) ? Phase::kDecode : Phase::kPrefill;
  step_graph(phase, all_logits);
  const StepGraph& step = graphs_.at({phase, all_logits});

  std::vector<int32_t> ids(tokens.begin(), tokens.end());
  std::vector<int32_t> positions(tokens.size());
  std::iota(positions.begin(), positions.end(), static_cast<int32_t>(length_));
  const TensorView io[] = {TensorView::contiguous(ids.data(), {n}, DType::kI32, LifetimeClass::kIo),
                           TensorView::contiguous(positions.data(), {n}, DType::kI32, LifetimeClass::kIo)};
  GraphBindings bindings{step.weights, kv_, io, SymbolBindings{.seq = n, .past = length_}, step.weights_id, kv_id_};
  ForwardResult result;
  // Whatever happens, this step's stack frame is gone when forward() returns (another
  // session may push the next one).
  struct FramePopper {
    StackFrame& frame;
    ~FramePopper() { frame.pop(); }
  } pop_on_exit{frame_};
  DJINN_ASSIGN_OR_RETURN(std::vector<TensorView> outputs, run_step(step.model_graph, bindings, result));

  const TensorView& logits = outputs[0];
  result.rows = logits.dim(0);
  result.logits.resize(static_cast<size_t>(logits.numel()));
  const CopyRegion reads[] = {{result.logits.data(), logits.data, logits.nbytes()},
                              {&result.next_token, outputs[1].data, sizeof(int32_t)}};
  DJINN_RETURN_IF_ERROR(backend_.copy(reads, CopyQueue::kCompute));
  frame_.pop();  // planned: the step's activations die with the step
  result.swap_wait_us = host_wait_us;
  if (ordered_after.valid() && ordered_after.done()) {
    // The copy's end on the device: issued at issued_at(), copy_seconds() long (its
    // stream was idle: swap-ins queue behind nothing but earlier swap-ins).
    const double copy_end_us = std::chrono::duration<double, std::micro>(ordered_after.issued_at() - step_start).count() +
                               ordered_after.copy_seconds() * 1e6;
    const double waited = std::clamp(copy_end_us, 0.0, result.compute_us);
    result.swap_wait_us += waited;
    result.compute_us -= waited;
  }
  // The step has finished, so has the copy it was ordered after: free the slice. A
  // copy that failed means the step read a bad cache: the session goes back to SWAPPED
  // (its state is still in the slice) and the step does not count.
  if (residency_ == Residency::kSwappingIn) DJINN_RETURN_IF_ERROR(settle_swap());
  length_ += n;
  return result;
}

Result<GenerateResult> InferenceSession::generate(std::span<const int32_t> prompt, int64_t max_new_tokens) {
  if (max_new_tokens < 0) return invalid_argument(fmt::format("max_new_tokens must be >= 0, got {}", max_new_tokens));
  const int64_t room = capacity_ - length_ - static_cast<int64_t>(prompt.size());  // small: no overflow below
  if (max_new_tokens > 0 && max_new_tokens - 1 > room)
    return out_of_range(fmt::format("{} prompt tokens + {} new tokens after the {} cached exceed the context of {} tokens",
                                    prompt.size(), max_new_tokens, length_, capacity_));
  GenerateResult result;
  if (max_new_tokens == 0) return result;
  auto start = std::chrono::steady_clock::now();
  DJINN_ASSIGN_OR_RETURN(ForwardResult first, forward(prompt));
  result.prefill_ms = ms_since(start);
  result.new_tokens.push_back(first.next_token);
  while (static_cast<int64_t>(result.new_tokens.size()) < max_new_tokens) {
    start = std::chrono::steady_clock::now();
    const int32_t last = result.new_tokens.back();
    DJINN_ASSIGN_OR_RETURN(ForwardResult step, forward(std::span<const int32_t>(&last, 1)));
    result.decode_step_ms.push_back(ms_since(start));
    result.new_tokens.push_back(step.next_token);
  }
  return result;
}

}  // namespace djinn
