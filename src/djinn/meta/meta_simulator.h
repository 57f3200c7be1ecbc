// The meta-simulator: runs a graph without data to produce a Plan — shape and dtype
// inference (re-checked, so graphs from outside are validated too), liveness of every
// activation, stack offsets by first fit over live ranges (the frame's peak bytes),
// KV bytes appended, FLOP and byte estimates.
#pragma once

#include "djinn/core/status.h"
#include "djinn/meta/plan.h"

namespace djinn {

// The bucket a step of `graph` with `symbols` falls in: seq rounded up to a power of
// two, and past likewise when an activation's shape depends on past (0 otherwise).
PlanKey plan_key(const Graph& graph, const SymbolBindings& symbols);

// Plans `graph` at the bucket of `symbols`. Errors name the node that failed.
Result<Plan> simulate(const Graph& graph, const SymbolBindings& symbols);

}  // namespace djinn
