// Runtime: the in-process API — one backend, its VMU, a plan cache, the loaded models
// and the open sessions. It is the library use of djinn and the "native" baseline the
// server's remote execution is compared with.
//
//  - load_model: weights go into the VMU's Text segment; loading the same model
//    (source, dtype, seed) again returns the same id and costs no memory (refcounted).
//  - open_session: the session's KV cache lives in its own Data-segment arena; the
//    arena size is --arena-mb, else GENIE_VMU_SESSION_ARENA_MB, else the first
//    session's need (KV bytes per token x its max context).
//  - forward / generate: every step runs from the PlanCache, activations on the Stack;
//    a session's decode step is planned when it opens.
//  - run_graph: any small graph, e.g. one add, with inputs the caller gives.
// Threads: not thread-safe; one caller (later: the scheduler thread) at a time.
#pragma once

#include <cstdint>
#include <map>
#include <tuple>
#include <memory>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "djinn/backend/backend.h"
#include "djinn/exec/inference_session.h"
#include "djinn/meta/plan_cache.h"
#include "djinn/models/model.h"
#include "djinn/swap/swap_manager.h"
#include "djinn/vmu/vmu.h"

namespace djinn {

struct RuntimeOptions {
  DeviceKind device = DeviceKind::kCpu;
  double device_mem_gb = 0;  // VMU cap; 0: the device's free memory minus a reserve
  double arena_mb = 0;       // session arena size; 0: GENIE_VMU_SESSION_ARENA_MB, else per model
  double host_pool_gb = 0;   // swap space reserved in host memory
  // Make the host pool ready (populated, pinned) in the background after create():
  // a server with a large pool serves at once (see HostPool).
  bool host_pool_background = false;
  // When a model loads, grow the Stack segment to what a prefill of this many tokens
  // needs (at most the model's context), so a session's first long prompt does not pay
  // for growing and faulting in activation memory. 0: grow on first use.
  int64_t reserve_prefill_tokens = 0;
  size_t plan_cache_entries = 64;
};

using ModelId = int64_t;
using SessionId = int64_t;

class Runtime {
 public:
  static Result<std::unique_ptr<Runtime>> create(const RuntimeOptions& options);
  // The same on a backend the caller made (options.device is ignored), e.g. a test
  // backend.
  static Result<std::unique_ptr<Runtime>> create(std::unique_ptr<Backend> backend, const RuntimeOptions& options);
  ~Runtime();

  Result<ModelId> load_model(const std::string& source, const LoadOptions& options = {});
  Status unload_model(ModelId model);
  // `max_context` 0: as many tokens as the arena holds (at most the model's max).
  Result<SessionId> open_session(ModelId model, int64_t max_context = 0);
  Status close_session(SessionId session);

  // KV swapping (swap/swap_manager.h): the copy runs on the swap worker; the session
  // settles (frees its arena, or its HostPool slice) when next used or settled.
  // forward / generate on a swapped session swap it in first (SwapUse::kStepFollows).
  // swap_in's `use`: kAhead for a swap-in ahead of the session's next step (the
  // policy's), kStepFollows when that step is issued right after.
  Result<SwapTicket> swap_out(SessionId session);
  Result<SwapTicket> swap_in(SessionId session, SwapUse use);
  Status settle(SessionId session);
  SwapManager& swap_manager() { return *swap_; }

  Result<ForwardResult> forward(SessionId session, std::span<const int32_t> tokens, bool all_logits = false);
  Result<GenerateResult> generate(SessionId session, std::span<const int32_t> prompt, int64_t max_new_tokens);
  // One batched decode step: sessions[i] consumes tokens[i]. The sessions must share a
  // model and a context capacity (else: invalid argument; run them one by one). The
  // result equals forward(sessions[i], {tokens[i]}) for each, up to float rounding of
  // the batched GEMMs; results[i].dispatch_us / compute_us are the batch's.
  // `with_logits` false: only next_token is filled in (the server's Generate path; on a
  // GPU it saves moving batch x vocab floats to the host every step).
  Result<std::vector<ForwardResult>> decode_batch(std::span<const SessionId> sessions, std::span<const int32_t> tokens,
                                                  bool with_logits = true);
  // Runs `graph` through the plan cache. `inputs` has one view per graph input in
  // value-id order (weights, kv and io alike; kv inputs are updated in place).
  Result<std::vector<HostTensor>> run_graph(const Graph& graph, std::span<const TensorView> inputs,
                                            const SymbolBindings& symbols);

  Result<std::shared_ptr<const Model>> model(ModelId model) const;
  Result<InferenceSession*> session(SessionId session);
  Result<const InferenceSession*> session(SessionId session) const;
  Backend& backend() { return *backend_; }
  Vmu& vmu() { return *vmu_; }
  PlanCache& plan_cache() { return plan_cache_; }
  size_t open_sessions() const { return sessions_.size(); }
  // {"device", "vmu", "plan_cache", "models", "sessions"}.
  nlohmann::json stats_json() const;
  nlohmann::json swap_json() const;

 private:
  struct LoadedModel {
    std::string key;
    std::shared_ptr<const Model> model;
    int64_t refcount = 0;
  };
  Runtime(std::unique_ptr<Backend> backend, std::unique_ptr<Vmu> vmu, const RuntimeOptions& options);
  // RuntimeOptions::reserve_prefill_tokens for `model`.
  Status reserve_prefill_stack(const Model& model);
  // The session, resident: a swapped session is swapped in (and settled) first.
  Result<InferenceSession*> resident_session(SessionId session);

  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Vmu> vmu_;
  int64_t reserve_prefill_tokens_ = 0;
  std::unique_ptr<SwapManager> swap_;  // outlives the sessions (declared before them)
  PlanCache plan_cache_;
  std::map<ModelId, LoadedModel> models_;
  std::map<SessionId, std::unique_ptr<InferenceSession>> sessions_;
  ModelId next_model_id_ = 1;
  SessionId next_session_id_ = 1;
  Executor graph_executor_;  // run_graph's
  struct BatchGraph {
    ModelGraph graph;
    std::vector<TensorView> weights;  // parallel to graph.graph.weight_values()
    uint64_t weights_id = next_binding_id();
    std::shared_ptr<const Model> model;  // keeps the weights (and the key's address) alive
  };
  // Batched decode graphs by (model, batch, capacity).
  std::map<std::tuple<const Model*, int64_t, int64_t>, BatchGraph> batch_graphs_;
  Executor batch_executor_;
  // The KV table of a batch composition (the sessions' KV table ids, in order) and its
  // binding id: the same sessions with the same arenas get the same table and id, so a
  // step builds no views, the executor rebinds nothing and may replay a captured step
  // (see executor.h). A session's kv_id changes whenever its views do.
  struct BatchKv {
    uint64_t id = 0;
    std::vector<TensorView> views;
  };
  const BatchKv& batch_kv(std::span<InferenceSession* const> sessions);
  static constexpr size_t kMaxBatchKvs = 64;
  std::map<std::vector<uint64_t>, BatchKv> batch_kvs_;
};

}  // namespace djinn
