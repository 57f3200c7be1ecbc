#include "djinn/rpc/graph_codec.h"

#include <gtest/gtest.h>

#include <string>

#include "djinn/models/model_config.h"
#include "djinn/models/model_graph.h"

namespace djinn::rpc {
namespace {

// a[seq, 4] + b[4] -> c; c * a -> out.
Graph small_add_graph() {
  Graph g(Phase::kPrefill);
  const ValueId a = g.add_io_input("a", DType::kF32, {Symbol::kSeq, 4});
  const ValueId b = g.add_weight("b", DType::kF32, {4});
  const ValueId c = g.add_node(OpKind::kAdd, {a, b});
  g.mark_output(g.add_node(OpKind::kMul, {c, a}));
  return g;
}

GraphDef encode(const Graph& g) {
  GraphDef def;
  graph_to_proto(g, def);
  return def;
}

// Decoding must fail, with a message that contains `needle`.
void expect_refused(const GraphDef& def, const std::string& needle) {
  Result<Graph> decoded = graph_from_proto(def);
  ASSERT_FALSE(decoded.ok()) << "decoded a graph that should have been refused; expected: " << needle;
  EXPECT_NE(decoded.status().code(), StatusCode::kOk);
  EXPECT_NE(decoded.status().message().find(needle), std::string::npos)
      << "message '" << decoded.status().message() << "' does not name '" << needle << "'";
}

void expect_round_trip(const Graph& original) {
  const GraphDef def = encode(original);
  Result<Graph> decoded = graph_from_proto(def);
  ASSERT_TRUE(decoded.ok()) << decoded.status().to_string();
  EXPECT_EQ(decoded->structural_hash(), original.structural_hash());
  EXPECT_EQ(decoded->phase(), original.phase());
  EXPECT_EQ(decoded->values().size(), original.values().size());
  EXPECT_EQ(decoded->nodes().size(), original.nodes().size());
  EXPECT_EQ(decoded->outputs(), original.outputs());
  EXPECT_EQ(decoded->weight_values().size(), original.weight_values().size());
  EXPECT_EQ(decoded->kv_values().size(), original.kv_values().size());
  EXPECT_EQ(decoded->io_inputs().size(), original.io_inputs().size());
  // Encoding the decoded graph again gives the same bytes.
  EXPECT_EQ(encode(*decoded).SerializeAsString(), def.SerializeAsString());
}

TEST(GraphCodec, SmallGraphRoundTripKeepsTheHash) { expect_round_trip(small_add_graph()); }

// Model builders declare weights as they go, so graph inputs and node outputs
// interleave in value-id order; the wire lists inputs first and must still give back
// the same structure.
TEST(GraphCodec, InputsDeclaredAfterNodesRoundTrip) {
  Graph g(Phase::kPrefill);
  const ValueId a = g.add_io_input("a", DType::kF32, {Symbol::kSeq, 4});
  const ValueId b = g.add_weight("b", DType::kF32, {4});
  const ValueId c = g.add_node(OpKind::kAdd, {a, b});
  const ValueId d = g.add_weight("d", DType::kF32, {Symbol::kSeq, 4});  // declared after node 0
  g.mark_output(g.add_node(OpKind::kMul, {c, d}));
  expect_round_trip(g);
}

TEST(GraphCodec, LlamaTinyDecodeGraphRoundTripKeepsTheHash) {
  const ModelConfig config = *preset_config("llama-tiny");
  expect_round_trip(build_model_graph(config, {.phase = Phase::kDecode, .kv_capacity = 32}).graph);
}

TEST(GraphCodec, Gpt2TinyPrefillGraphRoundTripKeepsTheHash) {
  const ModelConfig config = *preset_config("gpt2-tiny");
  expect_round_trip(build_model_graph(config, {.phase = Phase::kPrefill, .kv_capacity = 16}).graph);
}

TEST(GraphCodec, EncodesNamesNotNumbers) {
  const GraphDef def = encode(small_add_graph());
  ASSERT_EQ(def.inputs_size(), 2);
  EXPECT_EQ(def.phase(), "prefill");
  EXPECT_EQ(def.inputs(0).lifetime(), "io");
  EXPECT_EQ(def.inputs(0).shape(0).symbol(), "seq");
  EXPECT_EQ(def.inputs(1).lifetime(), "weight");
  ASSERT_EQ(def.nodes_size(), 2);
  EXPECT_EQ(def.nodes(0).op(), "add");
  EXPECT_EQ(def.outputs_size(), 1);
}

TEST(GraphCodec, RefusesAnUnknownOp) {
  GraphDef def = encode(small_add_graph());
  def.mutable_nodes(1)->set_op("conv3d");
  expect_refused(def, "unknown op 'conv3d'");
  def.mutable_nodes(1)->set_op("");
  expect_refused(def, "unknown op");
}

TEST(GraphCodec, RefusesAReadOfALaterValue) {
  GraphDef def = encode(small_add_graph());
  // Node 0 defines value 2; reading value 3 (node 1's output) from node 0 is a cycle.
  def.mutable_nodes(0)->set_inputs(0, 3);
  expect_refused(def, "not defined before it");
  // Reading its own output.
  def = encode(small_add_graph());
  def.mutable_nodes(0)->set_inputs(1, 2);
  expect_refused(def, "not defined before it");
  // Far out of range.
  def = encode(small_add_graph());
  def.mutable_nodes(1)->set_inputs(0, 1 << 30);
  expect_refused(def, "not defined before it");
}

TEST(GraphCodec, RefusesANegativeInputId) {
  GraphDef def = encode(small_add_graph());
  def.mutable_nodes(0)->set_inputs(0, -1);
  expect_refused(def, "reads value -1");
}

TEST(GraphCodec, RefusesAWrongArity) {
  GraphDef def = encode(small_add_graph());
  def.mutable_nodes(0)->add_inputs(0);
  expect_refused(def, "takes 2 inputs, got 3");
  def.mutable_nodes(0)->clear_inputs();
  expect_refused(def, "takes 2 inputs, got 0");
}

TEST(GraphCodec, RefusesAnUnknownDtype) {
  GraphDef def = encode(small_add_graph());
  def.mutable_inputs(1)->set_dtype("f128");
  expect_refused(def, "unknown dtype 'f128'");
  def.mutable_inputs(1)->set_dtype("");
  expect_refused(def, "unknown dtype");
}

TEST(GraphCodec, RefusesAnUnknownLifetime) {
  GraphDef def = encode(small_add_graph());
  def.mutable_inputs(0)->set_lifetime("forever");
  expect_refused(def, "unknown lifetime 'forever'");
  // Activations are made by nodes, never sent as graph inputs.
  def.mutable_inputs(0)->set_lifetime("activation");
  expect_refused(def, "unknown lifetime 'activation'");
}

TEST(GraphCodec, RefusesAnUnknownSymbol) {
  GraphDef def = encode(small_add_graph());
  def.mutable_inputs(0)->mutable_shape(0)->set_symbol("batch");
  expect_refused(def, "unknown symbol 'batch'");
}

TEST(GraphCodec, RefusesAnUnknownPhase) {
  GraphDef def = encode(small_add_graph());
  def.set_phase("training");
  expect_refused(def, "unknown graph phase 'training'");
  def.set_phase("");
  expect_refused(def, "unknown graph phase");
}

TEST(GraphCodec, RefusesAGraphWithoutOutputs) {
  GraphDef def = encode(small_add_graph());
  def.clear_outputs();
  expect_refused(def, "no outputs");
}

TEST(GraphCodec, RefusesAnOutputOutOfRange) {
  GraphDef def = encode(small_add_graph());
  def.set_outputs(0, 4);  // values 0..3 exist
  expect_refused(def, "graph output 4 does not exist");
  def.set_outputs(0, -2);
  expect_refused(def, "graph output -2 does not exist");
}

TEST(GraphCodec, RefusesANodeWhoseShapesDoNotFitTheOp) {
  Graph g(Phase::kPrefill);
  const ValueId x = g.add_io_input("x", DType::kF32, {Symbol::kSeq, 8});
  const ValueId w = g.add_weight("w", DType::kF32, {8, 16});
  g.mark_output(g.add_node(OpKind::kMatMul, {x, w}));
  GraphDef def = encode(g);
  ASSERT_TRUE(graph_from_proto(def).ok());
  def.mutable_inputs(1)->mutable_shape(0)->set_value(7);  // w [7, 16]: inner dims 8 vs 7
  expect_refused(def, "inner dimensions differ");
  // And the message says which node.
  expect_refused(def, "node 0");
  // An i32 ids tensor as a matmul operand.
  def = encode(g);
  def.mutable_inputs(0)->set_dtype("i32");
  expect_refused(def, "matmul");
}

// Attributes chosen so that the checks' own arithmetic overflows must still be
// refused: the kernels trust shape inference and would read or write out of bounds.
TEST(GraphCodec, RefusesSliceColumnsWhoseEndOverflows) {
  Graph g(Phase::kPrefill);
  const ValueId x = g.add_io_input("x", DType::kF32, {1, 4});
  g.mark_output(g.add_node(OpKind::kSlice, {x}, OpAttrs{.start = 0, .length = 4}));
  GraphDef def = encode(g);
  ASSERT_TRUE(graph_from_proto(def).ok());
  def.mutable_nodes(0)->mutable_attrs()->set_start(INT64_MAX - 2);  // start + length wraps negative
  expect_refused(def, "out of range");
  def.mutable_nodes(0)->mutable_attrs()->set_start(1);
  def.mutable_nodes(0)->mutable_attrs()->set_length(INT64_MAX);
  expect_refused(def, "out of range");
}

TEST(GraphCodec, RefusesAttentionHeadsWhoseWidthOverflows) {
  Graph g(Phase::kDecode);
  const ValueId q = g.add_io_input("q", DType::kF32, {1, 8});
  const ValueId k = g.add_kv("k", DType::kF32, {4, 8});
  const ValueId v = g.add_kv("v", DType::kF32, {4, 8});
  const ValueId pos = g.add_io_input("pos", DType::kI32, {1});
  g.mark_output(g.add_node(OpKind::kAttention, {q, k, v, pos}, OpAttrs{.n_heads = 2, .n_kv_heads = 2, .head_dim = 4, .scale = 0.5f}));
  GraphDef def = encode(g);
  ASSERT_TRUE(graph_from_proto(def).ok());
  // (2^62 + 2) * 4 wraps to 8 in 64 bits: the widths would "agree" with 2^62 heads.
  def.mutable_nodes(0)->mutable_attrs()->set_n_heads((int64_t{1} << 62) + 2);
  expect_refused(def, "attention");
  def.mutable_nodes(0)->mutable_attrs()->set_n_heads(2);
  def.mutable_nodes(0)->mutable_attrs()->set_n_kv_heads((int64_t{1} << 62) + 2);
  expect_refused(def, "attention");
}

TEST(GraphCodec, RefusesARankOverEight) {
  GraphDef def = encode(small_add_graph());
  for (int i = 0; i < 8; ++i) def.mutable_inputs(1)->add_shape()->set_value(1);  // rank 9
  expect_refused(def, "rank 9 is over 8");
}

TEST(GraphCodec, RefusesAHugeOrNegativeDimension) {
  GraphDef def = encode(small_add_graph());
  def.mutable_inputs(1)->mutable_shape(0)->set_value(int64_t{1} << 50);
  expect_refused(def, "out of range");
  def.mutable_inputs(1)->mutable_shape(0)->set_value(INT64_MAX);
  expect_refused(def, "out of range");
  def.mutable_inputs(1)->mutable_shape(0)->set_value(-4);
  expect_refused(def, "out of range");
}

TEST(GraphCodec, RefusesAGraphOverTheLimits) {
  const GraphDef def = encode(small_add_graph());
  Result<Graph> decoded = graph_from_proto(def, {.max_nodes = 1, .max_inputs = 100});
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), StatusCode::kOutOfRange);
  EXPECT_NE(decoded.status().message().find("over the limit"), std::string::npos) << decoded.status().message();
}

// Random field mutations of a valid GraphDef: every outcome is a graph or a Status
// naming the problem, never a crash or a CheckError; whatever decodes encodes and
// decodes again to the same structure.
TEST(GraphCodec, RandomMutationsNeverCrash) {
  Graph g(Phase::kPrefill);
  const ValueId x = g.add_io_input("x", DType::kF32, {Symbol::kSeq, 8});
  const ValueId w = g.add_weight("w", DType::kF32, {8, 8});
  const ValueId gamma = g.add_weight("gamma", DType::kF32, {8});
  const ValueId pos = g.add_io_input("pos", DType::kI32, {Symbol::kSeq});
  const ValueId cache = g.add_kv("cache", DType::kF32, {16, 8});
  const ValueId h = g.add_node(OpKind::kMatMul, {x, w});
  const ValueId n = g.add_node(OpKind::kRmsNorm, {h, gamma}, OpAttrs{.eps = 1e-5f});
  const ValueId r = g.add_node(OpKind::kRope, {n, pos}, OpAttrs{.head_dim = 4, .rope_theta = 10000});
  const ValueId kv = g.add_node(OpKind::kKvAppend, {cache, r, pos});
  const ValueId att = g.add_node(OpKind::kAttention, {r, kv, kv, pos}, OpAttrs{.n_heads = 2, .n_kv_heads = 2, .head_dim = 4, .scale = 0.5f});
  const ValueId sm = g.add_node(OpKind::kSoftmax, {att});
  const ValueId last = g.add_node(OpKind::kLastRow, {sm});
  g.mark_output(last);
  g.mark_output(g.add_node(OpKind::kArgmax, {last}));
  const GraphDef base = encode(g);
  ASSERT_TRUE(graph_from_proto(base).ok()) << graph_from_proto(base).status().to_string();

  uint64_t state = 12345;
  auto next = [&state](uint32_t bound) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(state >> 33) % bound;
  };
  const char* ops[] = {"embedding", "matmul", "add", "mul", "layernorm", "rmsnorm", "gelu_new", "silu", "rope",
                       "softmax", "slice", "kv_append", "attention", "last_row", "argmax", "nope"};
  const char* dtypes[] = {"f32", "f16", "bf16", "i32", "i64", "u8"};
  const char* lifetimes[] = {"weight", "kv", "io", "activation"};
  const char* symbols[] = {"", "seq", "past", "total", "x"};
  const int64_t dims[] = {0, 1, 2, 4, 8, 16, -1, int64_t{1} << 41, INT64_MAX, INT64_MIN};
  int decoded_ok = 0, refused = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    GraphDef def = base;
    const uint32_t mutations = 1 + next(3);
    for (uint32_t m = 0; m < mutations; ++m) {
      NodeDef* node = def.mutable_nodes(static_cast<int>(next(static_cast<uint32_t>(def.nodes_size()))));
      ValueDef* input = def.mutable_inputs(static_cast<int>(next(static_cast<uint32_t>(def.inputs_size()))));
      switch (next(10)) {
        case 0: node->set_op(ops[next(std::size(ops))]); break;
        case 1:
          if (node->inputs_size() > 0) node->set_inputs(static_cast<int>(next(static_cast<uint32_t>(node->inputs_size()))), static_cast<int32_t>(next(20)) - 2);
          break;
        case 2: node->add_inputs(static_cast<int32_t>(next(14))); break;
        case 3: input->set_dtype(dtypes[next(std::size(dtypes))]); break;
        case 4: input->set_lifetime(lifetimes[next(std::size(lifetimes))]); break;
        case 5:
          if (input->shape_size() > 0) {
            DimDef* d = input->mutable_shape(static_cast<int>(next(static_cast<uint32_t>(input->shape_size()))));
            d->set_symbol(symbols[next(std::size(symbols))]);
            d->set_value(dims[next(std::size(dims))]);
          }
          break;
        case 6: input->add_shape()->set_value(dims[next(std::size(dims))]); break;
        case 7: def.add_outputs(static_cast<int32_t>(next(20)) - 2); break;
        case 8:
          node->mutable_attrs()->set_head_dim(static_cast<int64_t>(next(9)) - 1);
          node->mutable_attrs()->set_n_heads(static_cast<int64_t>(next(5)) - 1);
          node->mutable_attrs()->set_start(dims[next(std::size(dims))]);
          node->mutable_attrs()->set_length(dims[next(std::size(dims))]);
          break;
        case 9: def.mutable_nodes()->SwapElements(0, static_cast<int>(next(static_cast<uint32_t>(def.nodes_size())))); break;
      }
    }
    Result<Graph> decoded = internal_error("not run");
    try {
      decoded = graph_from_proto(def);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "graph_from_proto threw on iteration " << iter << ": " << e.what() << "\n" << def.DebugString();
      continue;
    }
    if (!decoded.ok()) {
      ++refused;
      EXPECT_FALSE(decoded.status().message().empty());
      continue;
    }
    ++decoded_ok;
    GraphDef again;
    graph_to_proto(*decoded, again);
    Result<Graph> twice = graph_from_proto(again);
    ASSERT_TRUE(twice.ok()) << twice.status().to_string();
    EXPECT_EQ(twice->structural_hash(), decoded->structural_hash());
  }
  EXPECT_GT(decoded_ok, 0);
  EXPECT_GT(refused, 0);
}

}  // namespace
}  // namespace djinn::rpc
