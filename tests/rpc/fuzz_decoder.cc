// libFuzzer target for the server's decoding of bytes from the network: the frame
// decoder (rpc/wire.h), the graph decoder (rpc/graph_codec.h) and the meta-simulator
// that validates a decoded graph. None of them may crash, leak or read out of bounds
// on any input; errors are Statuses.
//
// Input layout: frames as [u32 little-endian length][bytes], repeated; whatever is
// left after the last whole frame is one more frame.
// Built with clang (-fsanitize=fuzzer,address,undefined) by tests/CMakeLists.txt when
// clang and its libFuzzer runtime are installed; CTest runs it for a bounded time.
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

#include "djinn/meta/meta_simulator.h"
#include "djinn/rpc/graph_codec.h"
#include "djinn/rpc/wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string_view> frames;
  const char* at = reinterpret_cast<const char*>(data);
  size_t left = size;
  while (left >= 4) {
    uint32_t length;
    std::memcpy(&length, at, 4);
    if (length > left - 4) break;
    frames.emplace_back(at + 4, length);
    at += 4 + length;
    left -= 4 + length;
  }
  if (left > 0) frames.emplace_back(at, left);

  djinn::rpc::DecodeLimits limits;
  limits.max_message_bytes = 1 << 20;
  limits.max_tensors = 64;
  djinn::Result<djinn::rpc::DecodedRequest> decoded = djinn::rpc::decode_request(frames, limits);
  if (!decoded.ok()) return 0;
  // Touch every tensor byte: the views must lie inside the frames.
  volatile uint8_t sink = 0;
  for (const djinn::TensorView& t : decoded->tensors)
    for (size_t i = 0; i < t.nbytes(); ++i) sink = sink ^ static_cast<const uint8_t*>(t.data)[i];
  if (decoded->request.has_run_graph() && decoded->request.run_graph().has_graph()) {
    djinn::rpc::GraphLimits graph_limits;
    graph_limits.max_nodes = 256;
    graph_limits.max_inputs = 256;
    djinn::Result<djinn::Graph> graph = djinn::rpc::graph_from_proto(decoded->request.run_graph().graph(), graph_limits);
    if (graph.ok()) {
      const auto& run = decoded->request.run_graph();
      (void)djinn::simulate(*graph, {.seq = run.seq() & 0xffff, .past = run.past() & 0xffff});
    }
  }
  return 0;
}
