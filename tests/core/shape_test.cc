#include "djinn/core/shape.h"

#include <gtest/gtest.h>

#include "djinn/core/tensor.h"

namespace djinn {
namespace {

TEST(Shape, SymbolicDimsResolvePerStep) {
  const SymShape shape{Symbol::kSeq, 768};
  EXPECT_EQ(to_string(shape), "[seq, 768]");
  EXPECT_EQ(shape.resolve({.seq = 5, .past = 0}), (Shape{5, 768}));
  const SymShape total{Symbol::kTotal, 64};
  EXPECT_EQ(total.resolve({.seq = 1, .past = 41}), (Shape{42, 64}));
  EXPECT_TRUE(shape[0].is_symbolic());
  EXPECT_FALSE(shape[1].is_symbolic());
  EXPECT_NE(SymShape({Symbol::kSeq}), SymShape({Symbol::kPast}));
}

TEST(TensorView, ContiguousStridesAndBytes) {
  float data[24];
  const TensorView view = TensorView::contiguous(data, {2, 3, 4}, DType::kF32);
  EXPECT_EQ(view.strides, (std::vector<int64_t>{12, 4, 1}));
  EXPECT_EQ(view.numel(), 24);
  EXPECT_EQ(view.nbytes(), 96u);
  EXPECT_TRUE(view.is_contiguous());
  EXPECT_EQ(view.row_ptr(1), reinterpret_cast<std::byte*>(data + 12));
}

}  // namespace
}  // namespace djinn
