// The SRG on the wire: Graph <-> GraphDef (djinn.proto). Decoding rebuilds the graph
// through Graph's own API, so every node is shape-checked, unknown ops are refused
// and a node can only read values defined before it (a cycle cannot be expressed).
#pragma once

#include "djinn/core/status.h"
#include "djinn/graph/graph.h"
#include "djinn/rpc/djinn.pb.h"

namespace djinn::rpc {

struct GraphLimits {
  size_t max_nodes = 100000;
  size_t max_inputs = 100000;
};

void graph_to_proto(const Graph& graph, GraphDef& out);
Result<Graph> graph_from_proto(const GraphDef& def, const GraphLimits& limits = {});

}  // namespace djinn::rpc
