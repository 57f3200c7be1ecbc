#include "djinn/runtime/runtime.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>

#include "djinn/meta/meta_simulator.h"

namespace djinn {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;
constexpr double kGiB = 1024.0 * kMiB;

// --arena-mb, else the environment variable of the original study, else 0 (per model).
Result<size_t> configured_arena_bytes(double arena_mb) {
  if (arena_mb > 0) return static_cast<size_t>(arena_mb * kMiB);
  if (const char* env = std::getenv("GENIE_VMU_SESSION_ARENA_MB"); env != nullptr && *env != '\0') {
    char* end = nullptr;
    const double mb = std::strtod(env, &end);
    if (end == env || *end != '\0' || !(mb > 0))
      return invalid_argument(fmt::format("GENIE_VMU_SESSION_ARENA_MB='{}' is not a positive number of MiB", env));
    return static_cast<size_t>(mb * kMiB);
  }
  return size_t{0};
}

}  // namespace

Result<std::unique_ptr<Runtime>> Runtime::create(const RuntimeOptions& options) {
  if (options.device_mem_gb < 0 || options.arena_mb < 0 || options.host_pool_gb < 0)
    return invalid_argument("memory sizes must not be negative");
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, make_backend(options.device));
  return create(std::move(backend), options);
}

Result<std::unique_ptr<Runtime>> Runtime::create(std::unique_ptr<Backend> backend, const RuntimeOptions& options) {
  if (options.device_mem_gb < 0 || options.arena_mb < 0 || options.host_pool_gb < 0)
    return invalid_argument("memory sizes must not be negative");
  if (backend == nullptr) return invalid_argument("Runtime::create: no backend");
  VmuOptions vmu_options;
  vmu_options.capacity_bytes = static_cast<size_t>(options.device_mem_gb * kGiB);
  DJINN_ASSIGN_OR_RETURN(vmu_options.arena_bytes, configured_arena_bytes(options.arena_mb));
  vmu_options.host_pool_bytes = static_cast<size_t>(options.host_pool_gb * kGiB);
  vmu_options.host_pool_growth = options.host_pool_background ? HostPool::Growth::kBackground : HostPool::Growth::kNow;
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<Vmu> vmu, Vmu::create(*backend, vmu_options));
  return std::unique_ptr<Runtime>(new Runtime(std::move(backend), std::move(vmu), options));
}

Runtime::Runtime(std::unique_ptr<Backend> backend, std::unique_ptr<Vmu> vmu, const RuntimeOptions& options)
    : backend_(std::move(backend)),
      vmu_(std::move(vmu)),
      reserve_prefill_tokens_(options.reserve_prefill_tokens),
      swap_(std::make_unique<SwapManager>(*backend_, vmu_->host_pool(), vmu_->data())),
      plan_cache_(options.plan_cache_entries),
      graph_executor_(*backend_),
      batch_executor_(*backend_) {}

Runtime::~Runtime() {
  sessions_.clear();  // arenas and frames go back before the VMU does
  models_.clear();
}

Result<ModelId> Runtime::load_model(const std::string& source, const LoadOptions& options) {
  const std::string key = fmt::format("{}|{}|{}", source, dtype_name(options.dtype), options.seed);
  for (auto& [id, loaded] : models_) {
    if (loaded.key == key) {
      ++loaded.refcount;
      return id;
    }
  }
  LoadOptions with_text = options;
  with_text.allocator = [this](size_t bytes, const std::string& name) -> Result<WeightStorage> {
    DJINN_ASSIGN_OR_RETURN(std::unique_ptr<TextAllocation> text, vmu_->text().append(bytes, name));
    std::byte* data = text->data();
    return WeightStorage{data, std::shared_ptr<void>(std::move(text))};
  };
  if (!backend_->host_addressable())
    with_text.upload = [this](void* dst, const void* src, size_t bytes) { return backend_->upload(dst, src, bytes); };
  DJINN_ASSIGN_OR_RETURN(std::shared_ptr<const Model> model, Model::load(source, with_text));
  DJINN_RETURN_IF_ERROR(reserve_prefill_stack(*model));
  const ModelId id = next_model_id_++;
  models_.emplace(id, LoadedModel{key, std::move(model), 1});
  return id;
}

Status Runtime::reserve_prefill_stack(const Model& model) {
  const int64_t tokens = std::min(reserve_prefill_tokens_, model.config().max_positions);
  if (tokens <= 0) return {};
  GraphOptions options;
  options.phase = Phase::kPrefill;
  options.kv_capacity = tokens;
  options.weight_dtype = options.kv_dtype = model.dtype();
  const ModelGraph graph = build_model_graph(model.config(), options);
  // Planned outside the cache: the sessions' graphs differ (their KV capacity), only
  // the activation sizes matter here. Plus the io staging a device backend adds.
  DJINN_ASSIGN_OR_RETURN(const Plan plan, simulate(graph.graph, {.seq = tokens, .past = 0}));
  constexpr size_t kStaging = 4096;
  const size_t io_bytes = 2 * (static_cast<size_t>(tokens) * sizeof(int32_t) + kStaging);
  const Status reserved = vmu_->stack().reserve(plan.stack_peak_bytes + io_bytes, fmt::format("{} prefill of {} tokens",
                                                                                              model.config().name, tokens));
  if (reserved.code() == StatusCode::kOutOfMemory) return {};  // best effort: the stack grows on first use instead
  return reserved;
}

Status Runtime::unload_model(ModelId id) {
  auto it = models_.find(id);
  if (it == models_.end()) return not_found(fmt::format("no model {}", id));
  if (--it->second.refcount == 0) {
    const Model* gone = it->second.model.get();
    models_.erase(it);  // Text is freed when its last session closes too
    std::erase_if(batch_graphs_, [&](const auto& entry) { return std::get<0>(entry.first) == gone; });
  }
  return {};
}

Result<std::shared_ptr<const Model>> Runtime::model(ModelId id) const {
  auto it = models_.find(id);
  if (it == models_.end()) return not_found(fmt::format("no model {}", id));
  return it->second.model;
}

Result<InferenceSession*> Runtime::session(SessionId id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return not_found(fmt::format("no session {}", id));
  return it->second.get();
}

Result<const InferenceSession*> Runtime::session(SessionId id) const {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return not_found(fmt::format("no session {}", id));
  return static_cast<const InferenceSession*>(it->second.get());
}

Result<SessionId> Runtime::open_session(ModelId model_id, int64_t max_context) {
  DJINN_ASSIGN_OR_RETURN(std::shared_ptr<const Model> model, model(model_id));
  const ModelConfig& config = model->config();
  const size_t per_token = model->kv_bytes_per_token();
  if (max_context < 0 || max_context > config.max_positions)
    return out_of_range(fmt::format("max context {} is outside [1, {}] for model {}", max_context, config.max_positions,
                                    config.name));
  DataSegment& data = vmu_->data();
  if (data.arena_bytes() == 0) {
    // No size configured: this session's need sets it (KV bytes per token x its max context).
    const int64_t context = max_context > 0 ? max_context : config.max_positions;
    DJINN_RETURN_IF_ERROR(data.set_arena_bytes(static_cast<size_t>(context) * per_token));
  }
  const auto arena_tokens = static_cast<int64_t>(data.arena_bytes() / per_token);
  const int64_t context = max_context > 0 ? max_context : std::min<int64_t>(arena_tokens, config.max_positions);
  if (context > arena_tokens || context <= 0)  // too big for any arena: waiting would not help
    return out_of_range(fmt::format("a session of {} tokens of {} needs {} of KV cache; the session arena is {}",
                                     std::max<int64_t>(context, 1), config.name, format_bytes(static_cast<size_t>(std::max<int64_t>(context, 1)) * per_token),
                                     format_bytes(data.arena_bytes())));
  const SessionId id = next_session_id_;
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<SessionArena> arena,
                         data.open_arena(fmt::format("session {} ({})", id, config.name)));
  DJINN_ASSIGN_OR_RETURN(std::unique_ptr<InferenceSession> session,
                         InferenceSession::create_planned(model, *backend_, context,
                                                          PlannedResources{std::move(arena), &vmu_->stack(), &plan_cache_}));
  ++next_session_id_;
  session->set_owner(fmt::format("session {} ({})", id, config.name));
  // Plan the decode step now, off the first token's critical path (a hit if another
  // session of this model and context size already did).
  DJINN_RETURN_IF_ERROR(plan_cache_.get(session->step_graph(Phase::kDecode, false).graph, {.seq = 1, .past = 0}));
  sessions_.emplace(id, std::move(session));
  return id;
}

Status Runtime::close_session(SessionId id) {
  if (sessions_.erase(id) == 0) return not_found(fmt::format("no session {}", id));
  return {};
}

Result<SwapTicket> Runtime::swap_out(SessionId id) {
  DJINN_ASSIGN_OR_RETURN(InferenceSession * s, session(id));
  return swap_->swap_out(*s);
}

Result<SwapTicket> Runtime::swap_in(SessionId id, SwapUse use) {
  DJINN_ASSIGN_OR_RETURN(InferenceSession * s, session(id));
  return swap_->swap_in(*s, use);
}

Status Runtime::settle(SessionId id) {
  DJINN_ASSIGN_OR_RETURN(InferenceSession * s, session(id));
  return s->settle_swap();
}

Result<InferenceSession*> Runtime::resident_session(SessionId id) {
  DJINN_ASSIGN_OR_RETURN(InferenceSession * s, session(id));
  if (s->residency() == Residency::kSwappingOut) DJINN_RETURN_IF_ERROR(s->settle_swap());
  if (s->residency() == Residency::kSwapped) DJINN_RETURN_IF_ERROR(swap_->swap_in(*s, SwapUse::kStepFollows).status());
  // A swap-in in flight (just issued, or started ahead by the policy): the step waits
  // for it on the device, not here.
  DJINN_RETURN_IF_ERROR(s->prepare_for_step());
  return s;
}

Result<ForwardResult> Runtime::forward(SessionId id, std::span<const int32_t> tokens, bool all_logits) {
  DJINN_ASSIGN_OR_RETURN(InferenceSession * s, resident_session(id));
  return s->forward(tokens, all_logits);
}

Result<GenerateResult> Runtime::generate(SessionId id, std::span<const int32_t> prompt, int64_t max_new_tokens) {
  DJINN_ASSIGN_OR_RETURN(InferenceSession * s, resident_session(id));
  return s->generate(prompt, max_new_tokens);
}

Result<std::vector<ForwardResult>> Runtime::decode_batch(std::span<const SessionId> ids, std::span<const int32_t> tokens,
                                                         bool with_logits) {
  if (ids.size() != tokens.size() || ids.empty())
    return invalid_argument(fmt::format("decode_batch: {} sessions but {} tokens", ids.size(), tokens.size()));
  std::vector<InferenceSession*> sessions;
  // Whatever fails from here, no session is left SWAPPING_IN behind a step that did
  // not run or count: their copies are settled (RESIDENT, or SWAPPED if one failed).
  struct SettleOnFailure {
    std::vector<InferenceSession*>& sessions;
    bool succeeded = false;
    ~SettleOnFailure() {
      if (succeeded) return;
      for (InferenceSession* s : sessions)
        if (s->residency() == Residency::kSwappingIn) (void)s->settle_swap();
    }
  } settle_on_failure{sessions};
  for (SessionId id : ids) {
    if (std::count(ids.begin(), ids.end(), id) > 1) return invalid_argument(fmt::format("session {} twice in one batch", id));
    DJINN_ASSIGN_OR_RETURN(InferenceSession * s, resident_session(id));
    sessions.push_back(s);
  }
  const Model& model = sessions[0]->model();
  const int64_t capacity = sessions[0]->capacity();
  for (size_t b = 0; b < sessions.size(); ++b) {
    if (&sessions[b]->model() != &model || sessions[b]->capacity() != capacity)
      return invalid_argument("decode_batch: the sessions differ in model or context capacity");
    DJINN_RETURN_IF_ERROR(sessions[b]->validate_step(tokens.subspan(b, 1)));
  }
  const auto batch = static_cast<int64_t>(sessions.size());
  const auto key = std::make_tuple(&model, batch, capacity);
  auto it = batch_graphs_.find(key);
  if (it == batch_graphs_.end()) {
    GraphOptions options;
    options.phase = Phase::kDecode;
    options.kv_capacity = capacity;
    options.batch = batch;
    options.weight_dtype = options.kv_dtype = model.dtype();
    BatchGraph built{build_model_graph(model.config(), options), {}, next_binding_id(), sessions[0]->model_ptr()};
    for (ValueId v : built.graph.graph.weight_values()) built.weights.push_back(*model.weight(built.graph.graph.value(v).name));
    it = batch_graphs_.emplace(key, std::move(built)).first;
  }
  const BatchGraph& step = it->second;
  const BatchKv& kv = batch_kv(sessions);
  std::vector<int32_t> token_ids(tokens.begin(), tokens.end()), positions;
  for (InferenceSession* s : sessions) positions.push_back(static_cast<int32_t>(s->length()));
  const TensorView io[] = {TensorView::contiguous(token_ids.data(), {batch}, DType::kI32, LifetimeClass::kIo),
                           TensorView::contiguous(positions.data(), {batch}, DType::kI32, LifetimeClass::kIo)};
  const SymbolBindings symbols{.seq = 1, .past = 0};  // shapes are constant; positions carry the lengths

  StackFrame frame;
  PlannedStepTiming timing;
  DJINN_ASSIGN_OR_RETURN(std::vector<TensorView> outputs,
                         run_planned_step(batch_executor_, plan_cache_, vmu_->stack(), step.graph.graph,
                                          GraphBindings{step.weights, kv.views, io, symbols, step.weights_id, kv.id},
                                          "batched decode", frame, &timing));

  const auto vocab = static_cast<size_t>(model.config().vocab_size);
  std::vector<float> logits(with_logits ? sessions.size() * vocab : 0);
  std::vector<int32_t> next(sessions.size());
  const CopyRegion reads[] = {{next.data(), outputs[1].data, outputs[1].nbytes()},
                              {logits.data(), outputs[0].data, with_logits ? outputs[0].nbytes() : 0}};
  DJINN_RETURN_IF_ERROR(backend_->copy(reads, CopyQueue::kCompute));
  // Swap-ins this step was ordered after are done with it: free their slices. A copy
  // that failed means its session read a bad cache: no session's step counts (none
  // advances; the caller may run them again) and the first failure is returned.
  Status settled;
  for (InferenceSession* s : sessions)
    if (s->residency() == Residency::kSwappingIn) {
      Status status = s->settle_swap();
      if (settled.ok() && !status.ok()) settled = std::move(status);
    }
  DJINN_RETURN_IF_ERROR(settled);
  std::vector<ForwardResult> results(sessions.size());
  for (size_t b = 0; b < sessions.size(); ++b) {
    if (with_logits)
      results[b].logits.assign(logits.begin() + static_cast<std::ptrdiff_t>(b * vocab),
                               logits.begin() + static_cast<std::ptrdiff_t>((b + 1) * vocab));
    results[b].rows = 1;
    results[b].next_token = next[b];
    results[b].dispatch_us = timing.dispatch_us;
    results[b].compute_us = timing.compute_us;
    sessions[b]->advance_length(1);
  }
  settle_on_failure.succeeded = true;
  return results;
}

const Runtime::BatchKv& Runtime::batch_kv(std::span<InferenceSession* const> sessions) {
  std::vector<uint64_t> key;
  key.reserve(sessions.size());
  for (const InferenceSession* s : sessions) key.push_back(s->kv_id());
  if (batch_kvs_.size() >= kMaxBatchKvs) batch_kvs_.clear();  // ids only need to be unique
  auto [it, inserted] = batch_kvs_.try_emplace(std::move(key));
  if (!inserted) return it->second;
  BatchKv& kv = it->second;
  kv.id = next_binding_id();
  // Layer-major, then session, then K / V (see GraphOptions::batch).
  const int64_t layers = sessions[0]->model().config().n_layers;
  kv.views.reserve(static_cast<size_t>(2 * layers) * sessions.size());
  for (int64_t l = 0; l < layers; ++l)
    for (const InferenceSession* s : sessions) {
      kv.views.push_back(s->kv()[static_cast<size_t>(2 * l)]);
      kv.views.push_back(s->kv()[static_cast<size_t>(2 * l + 1)]);
    }
  return kv;
}

Result<std::vector<HostTensor>> Runtime::run_graph(const Graph& graph, std::span<const TensorView> inputs,
                                                   const SymbolBindings& symbols) {
  const size_t n_inputs = graph.weight_values().size() + graph.kv_values().size() + graph.io_inputs().size();
  if (inputs.size() != n_inputs)
    return invalid_argument(fmt::format("the graph has {} inputs, {} given", n_inputs, inputs.size()));
  // Inputs come in value-id order; split them into the graph's three tables.
  std::vector<TensorView> weights, kv, io;
  size_t next = 0;
  for (size_t v = 0; v < graph.values().size(); ++v) {
    if (graph.values()[v].producer >= 0) continue;
    const TensorView& view = inputs[next++];
    switch (graph.values()[v].lifetime) {
      case LifetimeClass::kWeight: weights.push_back(view); break;
      case LifetimeClass::kKv: kv.push_back(view); break;
      case LifetimeClass::kIo:
      case LifetimeClass::kActivation: io.push_back(view); break;
    }
  }
  // The caller's weight and kv tensors are host memory; a backend the host cannot
  // address gets device copies of them in a frame of their own (kv copied back after).
  StackFrame inputs_frame;
  std::vector<TensorView> host_kv;
  if (!backend_->host_addressable()) {
    constexpr size_t kAlignment = 256;
    auto align = [](size_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; };
    size_t bytes = 0;
    for (const TensorView& view : weights) bytes += align(view.nbytes());
    for (const TensorView& view : kv) bytes += align(view.nbytes());
    // The stack grows only while no frame is open: make room for this frame and the
    // step's (its plan's peak plus the staged io inputs) before pushing either.
    DJINN_ASSIGN_OR_RETURN(std::shared_ptr<const Plan> plan, plan_cache_.get(graph, symbols));
    size_t step_bytes = align(plan->stack_peak_bytes);
    for (const TensorView& view : io) step_bytes += align(view.nbytes());
    DJINN_RETURN_IF_ERROR(vmu_->stack().reserve(bytes + kAlignment + step_bytes + kAlignment, "run_graph"));
    DJINN_ASSIGN_OR_RETURN(inputs_frame, vmu_->stack().push(bytes, "run_graph inputs"));
    std::vector<CopyRegion> uploads;
    size_t at = 0;
    auto move_to_device = [&](TensorView& view) -> Status {
      if (!view.is_contiguous()) return invalid_argument("run_graph inputs must be contiguous");
      uploads.push_back(CopyRegion{inputs_frame.base() + at, view.data, view.nbytes()});
      view.data = inputs_frame.base() + at;
      at += align(view.nbytes());
      return {};
    };
    host_kv = kv;
    for (TensorView& view : weights) DJINN_RETURN_IF_ERROR(move_to_device(view));
    for (TensorView& view : kv) DJINN_RETURN_IF_ERROR(move_to_device(view));
    DJINN_RETURN_IF_ERROR(backend_->copy(uploads, CopyQueue::kCompute));
  }
  StackFrame frame;
  DJINN_ASSIGN_OR_RETURN(std::vector<TensorView> outputs,
                         run_planned_step(graph_executor_, plan_cache_, vmu_->stack(), graph,
                                          GraphBindings{weights, kv, io, symbols}, "run_graph", frame));
  if (!host_kv.empty()) {
    std::vector<CopyRegion> downloads;
    for (size_t i = 0; i < kv.size(); ++i) downloads.push_back(CopyRegion{host_kv[i].data, kv[i].data, kv[i].nbytes()});
    DJINN_RETURN_IF_ERROR(backend_->copy(downloads, CopyQueue::kCompute));
  }
  std::vector<HostTensor> results;
  for (const TensorView& out : outputs) {
    HostTensor host{out.dtype, out.shape, std::vector<std::byte>(out.nbytes())};
    DJINN_RETURN_IF_ERROR(backend_->download(host.bytes.data(), out.data, host.bytes.size()));
    results.push_back(std::move(host));
  }
  return results;
}

nlohmann::json Runtime::swap_json() const {
  nlohmann::json swap = to_json(swap_->stats());
  size_t swapped = 0;
  for (const auto& [id, s] : sessions_) swapped += s->residency() != Residency::kResident;
  swap["swapped_now"] = swapped;  // sessions whose KV cache is (or is moving) out of the device
  return swap;
}

nlohmann::json Runtime::stats_json() const {
  nlohmann::json models = nlohmann::json::array();
  for (const auto& [id, loaded] : models_)
    models.push_back({{"id", id},
                      {"name", loaded.model->config().name},
                      {"refcount", loaded.refcount},
                      {"weight_bytes", loaded.model->weight_bytes()}});
  return {{"device", device_name(backend_->device())},
          {"vmu", vmu_->stats_json()},
          {"plan_cache", to_json(plan_cache_.stats())},
          {"swap", swap_json()},
          {"models", models},
          {"sessions", sessions_.size()}};
}

}  // namespace djinn
