#include "djinn/exec/interpreter.h"

#include <gtest/gtest.h>

#include "djinn/backend/cpu/cpu_backend.h"

namespace djinn {
namespace {

// y = gelu_new(x . w) over a symbolic number of rows.
struct TinyGraph {
  Graph graph{Phase::kPrefill};
  ValueId x, w, y;
  TinyGraph() {
    w = graph.add_weight("w", DType::kF32, {3, 2});
    x = graph.add_io_input("x", DType::kF32, {Symbol::kSeq, 3});
    y = graph.add_node(OpKind::kGeluNew, {graph.add_node(OpKind::kMatMul, {x, w})});
    graph.mark_output(y);
  }
};

TEST(Interpreter, RunsAGraphWithSymbolicRows) {
  TinyGraph t;
  CpuBackend backend;
  Interpreter interpreter(backend);
  float w[] = {1, 0, 0, 1, 1, 1};  // [3, 2]
  float x[] = {1, 2, 3, -1, -2, -3};
  const TensorView weights[] = {TensorView::contiguous(w, {3, 2}, DType::kF32, LifetimeClass::kWeight)};
  const TensorView io[] = {TensorView::contiguous(x, {2, 3}, DType::kF32, LifetimeClass::kIo)};
  Result<std::vector<TensorView>> out = interpreter.run(t.graph, {weights, {}, io, {.seq = 2, .past = 0}});
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  ASSERT_EQ(out->size(), 1u);
  EXPECT_EQ((*out)[0].shape, (Shape{2, 2}));
  // x . w = [[4, 5], [-4, -5]]; gelu(4) ~ 3.99993, gelu(-5) ~ -0.
  EXPECT_NEAR((*out)[0].as<float>()[0], 3.99993f, 1e-4f);
  EXPECT_NEAR((*out)[0].as<float>()[3], 0.0f, 1e-5f);
}

TEST(Interpreter, RejectsBindingsThatDoNotFit) {
  TinyGraph t;
  CpuBackend backend;
  Interpreter interpreter(backend);
  float w[6] = {}, x[6] = {};
  const TensorView weights[] = {TensorView::contiguous(w, {3, 2}, DType::kF32)};
  const TensorView io[] = {TensorView::contiguous(x, {2, 3}, DType::kF32)};
  // seq says 3 rows, the input has 2.
  Result<std::vector<TensorView>> wrong_rows = interpreter.run(t.graph, {weights, {}, io, {.seq = 3, .past = 0}});
  ASSERT_FALSE(wrong_rows.ok());
  EXPECT_NE(wrong_rows.status().message().find("'x'"), std::string::npos);
  // No weight bound.
  EXPECT_FALSE(interpreter.run(t.graph, {{}, {}, io, {.seq = 2, .past = 0}}).ok());
  // Wrong dtype.
  const TensorView half_weights[] = {TensorView::contiguous(w, {3, 2}, DType::kF16)};
  EXPECT_FALSE(interpreter.run(t.graph, {half_weights, {}, io, {.seq = 2, .past = 0}}).ok());
}

TEST(Interpreter, KernelErrorsNameTheOp) {
  Graph g(Phase::kPrefill);
  const ValueId table = g.add_weight("table", DType::kF32, {4, 2});
  const ValueId ids = g.add_io_input("ids", DType::kI32, {Symbol::kSeq});
  g.mark_output(g.add_node(OpKind::kEmbedding, {table, ids}, {}, "embedded"));
  CpuBackend backend;
  Interpreter interpreter(backend);
  float t[8] = {};
  int32_t bad_ids[] = {1, 9};
  const TensorView weights[] = {TensorView::contiguous(t, {4, 2}, DType::kF32)};
  const TensorView io[] = {TensorView::contiguous(bad_ids, {2}, DType::kI32)};
  Result<std::vector<TensorView>> out = interpreter.run(g, {weights, {}, io, {.seq = 2, .past = 0}});
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kOutOfRange);
  EXPECT_NE(out.status().message().find("embedding 'embedded'"), std::string::npos);
}

}  // namespace
}  // namespace djinn
