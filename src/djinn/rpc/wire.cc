#include "djinn/rpc/wire.h"

#include <fmt/format.h>

#include <cstdint>
#include <cstring>

namespace djinn::rpc {

void set_tensor_meta(TensorMeta& meta, const TensorView& view) {
  meta.set_dtype(std::string(dtype_name(view.dtype)));
  meta.clear_shape();
  for (int64_t d : view.shape) meta.add_shape(d);
}

Result<std::vector<TensorView>> decode_tensors(const google::protobuf::RepeatedPtrField<TensorMeta>& metas,
                                               std::span<const std::string_view> frames,
                                               std::vector<HostTensor>& realigned) {
  if (static_cast<size_t>(metas.size()) != frames.size())
    return invalid_argument(fmt::format("the header describes {} tensors but {} tensor frames came", metas.size(), frames.size()));
  std::vector<TensorView> views;
  views.reserve(frames.size());
  for (int i = 0; i < metas.size(); ++i) {
    const TensorMeta& meta = metas.Get(i);
    const std::optional<DType> dtype = parse_dtype(meta.dtype());
    if (!dtype) return invalid_argument(fmt::format("tensor {}: unknown dtype '{}'", i, meta.dtype()));
    if (meta.shape_size() > 8) return invalid_argument(fmt::format("tensor {}: rank {} is over 8", i, meta.shape_size()));
    Shape shape;
    uint64_t elements = 1;
    for (int64_t d : meta.shape()) {
      if (d < 0) return invalid_argument(fmt::format("tensor {}: negative dimension {}", i, d));
      if (d != 0 && elements > (uint64_t{1} << 48) / static_cast<uint64_t>(d))
        return invalid_argument(fmt::format("tensor {}: shape is too large", i));
      elements *= static_cast<uint64_t>(d);
      shape.push_back(d);
    }
    const uint64_t expected = elements * dtype_size(*dtype);
    const std::string_view frame = frames[static_cast<size_t>(i)];
    if (expected != frame.size())
      return invalid_argument(fmt::format("tensor {}: {} {} needs {} bytes but its frame has {}", i, dtype_name(*dtype),
                                          to_string(shape), expected, frame.size()));
    // Copied: frames whose bytes are misaligned for the dtype, and small frames, which
    // ZeroMQ stores inside the message object itself (up to 33 bytes), so their address
    // changes whenever the message is moved.
    constexpr size_t kInlineFrameBytes = 64;
    if (frame.size() <= kInlineFrameBytes || reinterpret_cast<uintptr_t>(frame.data()) % dtype_size(*dtype) != 0) {
      HostTensor copy{*dtype, shape, std::vector<std::byte>(frame.size())};
      if (!frame.empty()) std::memcpy(copy.bytes.data(), frame.data(), frame.size());
      realigned.push_back(std::move(copy));
      views.push_back(realigned.back().view());
      continue;
    }
    views.push_back(TensorView::contiguous(const_cast<char*>(frame.data()), std::move(shape), *dtype, LifetimeClass::kIo));
  }
  return views;
}

Result<DecodedRequest> decode_request(std::span<const std::string_view> frames, const DecodeLimits& limits) {
  if (frames.empty()) return invalid_argument("empty message: no header frame");
  size_t total = 0;
  for (std::string_view f : frames) total += f.size();
  if (total > limits.max_message_bytes)
    return out_of_range(fmt::format("request of {} bytes is over the limit of {} bytes (--max-request-mb)", total,
                                    limits.max_message_bytes));
  if (frames.size() - 1 > limits.max_tensors)
    return out_of_range(fmt::format("{} tensor frames is over the limit of {}", frames.size() - 1, limits.max_tensors));
  DecodedRequest decoded;
  if (!decoded.request.ParseFromArray(frames[0].data(), static_cast<int>(frames[0].size())))
    return invalid_argument("the header frame is not a valid Request protobuf");
  if (decoded.request.body_case() == Request::BODY_NOT_SET)
    return invalid_argument("unknown message type (the request has no body this server understands)");
  DJINN_ASSIGN_OR_RETURN(decoded.tensors, decode_tensors(decoded.request.tensors(), frames.subspan(1), decoded.realigned));
  return decoded;
}

std::string status_code_wire_name(StatusCode code) { return status_code_name(code); }

StatusCode status_code_from_wire(std::string_view name) {
  for (StatusCode c : {StatusCode::kOk, StatusCode::kInvalidArgument, StatusCode::kNotFound, StatusCode::kOutOfRange,
                       StatusCode::kDataLoss, StatusCode::kOutOfMemory, StatusCode::kPermissionDenied, StatusCode::kUnavailable, StatusCode::kUnimplemented, StatusCode::kInternal})
    if (name == status_code_name(c)) return c;
  return StatusCode::kInternal;
}

}  // namespace djinn::rpc
