// TensorView: a non-owning view of memory somebody else owns (a VMU segment, an
// mmap'd file, a staging buffer). Plain struct, passed by value.
//
//   data     first element (may be null for an empty view)
//   shape    extents, outermost first
//   strides  in elements, same rank as shape; contiguous() gives row-major strides
//   dtype    element type
//   lifetime what the tensor means (decides its segment; see lifetime.h)
#pragma once

#include <cstddef>
#include <cstring>
#include <vector>

#include "djinn/core/check.h"
#include "djinn/core/dtype.h"
#include "djinn/core/lifetime.h"
#include "djinn/core/shape.h"

namespace djinn {

struct TensorView {
  void* data = nullptr;
  Shape shape;
  std::vector<int64_t> strides;
  DType dtype = DType::kF32;
  LifetimeClass lifetime = LifetimeClass::kActivation;

  static std::vector<int64_t> contiguous_strides(const Shape& shape) {
    std::vector<int64_t> strides(shape.size());
    int64_t stride = 1;
    for (size_t i = shape.size(); i-- > 0;) {
      strides[i] = stride;
      stride *= shape[i];
    }
    return strides;
  }
  static TensorView contiguous(void* data, Shape shape, DType dtype,
                               LifetimeClass lifetime = LifetimeClass::kActivation) {
    auto strides = contiguous_strides(shape);
    return TensorView{data, std::move(shape), std::move(strides), dtype, lifetime};
  }

  size_t rank() const { return shape.size(); }
  int64_t dim(size_t i) const { return shape[i]; }
  int64_t numel() const { return num_elements(shape); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  bool is_contiguous() const { return strides == contiguous_strides(shape); }

  template <typename T>
  T* as() const {
    return static_cast<T*>(data);
  }
  // Pointer to row `row` of a 2-D (or flattened-leading) contiguous tensor.
  std::byte* row_ptr(int64_t row) const {
    DJINN_ASSERT(rank() >= 1);
    return static_cast<std::byte*>(data) + static_cast<size_t>(row * strides[0]) * dtype_size(dtype);
  }
};

// HostTensor: an owning host copy (results handed back to callers and over the wire).
struct HostTensor {
  DType dtype = DType::kF32;
  Shape shape;
  std::vector<std::byte> bytes;

  static HostTensor copy_of(const TensorView& view) {
    HostTensor t{view.dtype, view.shape, std::vector<std::byte>(view.nbytes())};
    if (!t.bytes.empty()) std::memcpy(t.bytes.data(), view.data, t.bytes.size());
    return t;
  }
  TensorView view() { return TensorView::contiguous(bytes.data(), shape, dtype, LifetimeClass::kIo); }
  template <typename T>
  const T* as() const {
    return reinterpret_cast<const T*>(bytes.data());
  }
};

}  // namespace djinn
