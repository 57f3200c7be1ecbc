// The wire format's decoding and encoding, independent of sockets: a message is a
// list of frames, frame 0 the protobuf (Request / Reply in djinn.proto), every later
// frame one tensor's raw bytes as described by the header's `tensors`.
//
// decode_request is the server's one entry point for bytes from the network: it
// never trusts them. Every malformed input comes back as a Status naming the
// problem (no header, protobuf that does not parse, no message body, tensor metadata
// that disagrees with the frames, sizes over the limit); it never crashes and never
// reads outside the frames. The fuzz target (tests/rpc/fuzz_decoder.cc) drives it.
#pragma once

#include <cstddef>
#include <span>
#include <string_view>
#include <vector>

#include "djinn/core/status.h"
#include "djinn/core/tensor.h"
#include "djinn/rpc/djinn.pb.h"

namespace djinn::rpc {

inline constexpr uint32_t kProtocolVersion = PROTOCOL_VERSION_CURRENT;

struct DecodeLimits {
  size_t max_message_bytes = size_t{256} << 20;  // all frames together
  size_t max_tensors = 4096;
};

// A request and views of its tensor frames (which the caller keeps alive).
struct DecodedRequest {
  Request request;
  std::vector<TensorView> tensors;  // lifetime kIo, contiguous, pointing into the frames (or `realigned`)
  std::vector<HostTensor> realigned;  // copies of small or misaligned frames (see decode_tensors)
};

Result<DecodedRequest> decode_request(std::span<const std::string_view> frames, const DecodeLimits& limits);

// Checks `metas` against `frames` (one per meta) and returns views into the frames.
// Small frames (ZeroMQ keeps them inside the message object, which may move) and frames
// whose address is not a multiple of their element size are copied into `realigned`,
// which must outlive the views; large frames are viewed in place (no copy).
Result<std::vector<TensorView>> decode_tensors(const google::protobuf::RepeatedPtrField<TensorMeta>& metas,
                                               std::span<const std::string_view> frames,
                                               std::vector<HostTensor>& realigned);

void set_tensor_meta(TensorMeta& meta, const TensorView& view);

// "not found", ... for Error.code, and back.
std::string status_code_wire_name(StatusCode code);
StatusCode status_code_from_wire(std::string_view name);

}  // namespace djinn::rpc
