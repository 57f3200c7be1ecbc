#include "djinn/graph/graph.h"

#include <gtest/gtest.h>

#include "djinn/graph/shape_inference.h"
#include "djinn/models/model_config.h"
#include "djinn/models/model_graph.h"

namespace djinn {
namespace {

TEST(OpTable, NamesArityAndTraitsRoundTrip) {
  for (int i = 0; i < kNumOps; ++i) {
    const auto op = static_cast<OpKind>(i);
    EXPECT_EQ(parse_op(op_name(op)), op);
    EXPECT_TRUE(op_arity(op) >= 1 || op_arity(op) == -1) << op_name(op);  // -1: variadic
  }
  EXPECT_FALSE(parse_op("conv2d").has_value());
  EXPECT_TRUE(op_has_trait(OpKind::kKvAppend, kWritesKv));
  EXPECT_TRUE(op_has_trait(OpKind::kAttention, kReadsKv));
  EXPECT_FALSE(op_has_trait(OpKind::kMatMul, kElementwise));
}

TEST(ShapeInference, BatchedDecodeAttentionNeedsACachePairPerSession) {
  OpAttrs attrs;
  attrs.n_heads = 4;
  attrs.n_kv_heads = 2;
  attrs.head_dim = 8;
  const ValueType q{DType::kF32, {3, 32}}, kv_new{DType::kF32, {3, 16}}, pos{DType::kI32, {3}};
  const ValueType cache{DType::kF16, {64, 16}};
  std::vector<ValueType> in = {q, kv_new, kv_new, pos, cache, cache, cache, cache, cache, cache};
  Result<ValueType> out = infer_output_type(OpKind::kBatchedDecodeAttention, attrs, in);
  ASSERT_TRUE(out.ok()) << out.status().to_string();
  EXPECT_EQ(out->shape, (SymShape{3, 32}));
  in.pop_back();  // an odd cache count
  EXPECT_FALSE(infer_output_type(OpKind::kBatchedDecodeAttention, attrs, in).ok());
  in.pop_back();  // two pairs for a batch of three
  EXPECT_FALSE(infer_output_type(OpKind::kBatchedDecodeAttention, attrs, in).ok());
  std::vector<ValueType> mixed = {q, kv_new, kv_new, pos, cache, cache, cache, cache, cache, ValueType{DType::kF32, {64, 16}}};
  EXPECT_FALSE(infer_output_type(OpKind::kBatchedDecodeAttention, attrs, mixed).ok());  // one cache of another dtype
  EXPECT_FALSE(infer_output_type(OpKind::kBatchedDecodeAttention, attrs, std::vector<ValueType>{q, kv_new, kv_new, pos}).ok());
}

TEST(ShapeInference, MatmulBothWeightLayouts) {
  const ValueType x{DType::kF32, {Symbol::kSeq, 64}};
  const ValueType conv1d{DType::kF16, {64, 192}};
  const ValueType linear{DType::kF16, {192, 64}};
  Result<ValueType> a = infer_output_type(OpKind::kMatMul, {}, std::vector{x, conv1d});
  ASSERT_TRUE(a.ok()) << a.status().to_string();
  EXPECT_EQ(a->shape, (SymShape{Symbol::kSeq, 192}));
  Result<ValueType> b = infer_output_type(OpKind::kMatMul, OpAttrs{.transpose_b = true}, std::vector{x, linear});
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->shape, (SymShape{Symbol::kSeq, 192}));
  Result<ValueType> bad = infer_output_type(OpKind::kMatMul, {}, std::vector{x, linear});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("inner dimensions"), std::string::npos);
}

TEST(ShapeInference, RejectsMismatchedInputs) {
  const ValueType m{DType::kF32, {4, 8}};
  const ValueType ids{DType::kI64, {4}};
  EXPECT_FALSE(infer_output_type(OpKind::kEmbedding, {}, std::vector{m, ids}).ok());  // ids must be i32
  EXPECT_FALSE(infer_output_type(OpKind::kAdd, {}, std::vector{m}).ok());           // arity
  EXPECT_FALSE(infer_output_type(OpKind::kSlice, OpAttrs{.start = 6, .length = 4}, std::vector{m}).ok());
  EXPECT_FALSE(infer_output_type(OpKind::kLayerNorm, {}, std::vector{m, ValueType{DType::kF32, {8}},
                                                                    ValueType{DType::kF32, {8}}})
                   .ok());  // eps 0
  OpAttrs heads{.n_heads = 3, .n_kv_heads = 2, .head_dim = 4};
  const ValueType q{DType::kF32, {1, 12}}, cache{DType::kF32, {16, 8}};
  const ValueType pos{DType::kI32, {1}};
  EXPECT_FALSE(infer_output_type(OpKind::kAttention, heads, std::vector{q, cache, cache, pos}).ok());  // 3 % 2 != 0
  OpAttrs good{.n_heads = 2, .n_kv_heads = 1, .head_dim = 6};
  const ValueType kv_cache{DType::kF32, {16, 6}};
  EXPECT_TRUE(infer_output_type(OpKind::kAttention, good, std::vector{q, kv_cache, kv_cache, pos}).ok());
  const ValueType wrong_pos{DType::kI64, {1}};
  EXPECT_FALSE(infer_output_type(OpKind::kAttention, good, std::vector{q, kv_cache, kv_cache, wrong_pos}).ok());
}

TEST(Graph, NodesAreOrderedAndLifetimesPropagate) {
  Graph g(Phase::kDecode);
  const ValueId w = g.add_weight("w", DType::kF32, {8, 8});
  const ValueId kv = g.add_kv("kv.0.k", DType::kF32, {16, 8});
  const ValueId x = g.add_io_input("x", DType::kF32, {1, 8});
  const ValueId pos = g.add_io_input("pos", DType::kI32, {1});
  const ValueId y = g.add_node(OpKind::kMatMul, {x, w});
  const ValueId appended = g.add_node(OpKind::kKvAppend, {kv, y, pos});
  g.mark_output(appended);
  EXPECT_EQ(g.value(y).lifetime, LifetimeClass::kActivation);
  EXPECT_EQ(g.value(appended).lifetime, LifetimeClass::kKv);  // aliases the cache
  EXPECT_EQ(g.value(w).lifetime, LifetimeClass::kWeight);
  EXPECT_EQ(g.value(x).lifetime, LifetimeClass::kIo);
  EXPECT_EQ(g.value(y).producer, 0);
  EXPECT_EQ(g.nodes().size(), 2u);
  EXPECT_FALSE(g.try_add_node(OpKind::kAdd, {x, 42}).ok());  // no such value
  EXPECT_THROW(g.add_node(OpKind::kAdd, {x, kv}), CheckError);
}

TEST(Graph, OnlyKvCachesAreWrittenInPlace) {
  Graph g(Phase::kDecode);
  const ValueId w = g.add_weight("w", DType::kF32, {16, 8});
  const ValueId cache = g.add_kv("cache", DType::kF32, {16, 8});
  const ValueId x = g.add_io_input("x", DType::kF32, {1, 8});
  const ValueId pos = g.add_io_input("pos", DType::kI32, {1});
  const ValueId activation = g.add_node(OpKind::kAdd, {x, x});
  EXPECT_TRUE(g.try_add_node(OpKind::kKvAppend, {cache, x, pos}).ok());
  for (ValueId target : {w, x, activation}) {
    const Result<ValueId> refused = g.try_add_node(OpKind::kKvAppend, {target, x, pos});
    ASSERT_FALSE(refused.ok());
    EXPECT_NE(refused.status().message().find("not a KV cache"), std::string::npos) << refused.status().message();
  }
  // batched_decode_attention writes every session's caches (inputs 4 on).
  const OpAttrs attrs{.n_heads = 2, .n_kv_heads = 2, .head_dim = 4, .scale = 0.5f};
  EXPECT_TRUE(g.try_add_node(OpKind::kBatchedDecodeAttention, {x, x, x, pos, cache, cache}, attrs).ok());
  EXPECT_FALSE(g.try_add_node(OpKind::kBatchedDecodeAttention, {x, x, x, pos, cache, w}, attrs).ok());
}

TEST(Graph, StructuralHashIgnoresNamesButSeesStructure) {
  auto make = [](const char* name, int64_t width, Phase phase) {
    Graph g(phase);
    const ValueId a = g.add_io_input(name, DType::kF32, {Symbol::kSeq, width});
    g.mark_output(g.add_node(OpKind::kGeluNew, {a}));
    return g.structural_hash();
  };
  EXPECT_EQ(make("a", 8, Phase::kPrefill), make("b", 8, Phase::kPrefill));
  EXPECT_NE(make("a", 8, Phase::kPrefill), make("a", 9, Phase::kPrefill));
  EXPECT_NE(make("a", 8, Phase::kPrefill), make("a", 8, Phase::kDecode));
}

TEST(ModelGraph, PhasesShareWeightsAndDifferInRows) {
  const ModelConfig config = *preset_config("llama-tiny");
  const ModelGraph prefill = build_model_graph(config, {.phase = Phase::kPrefill, .kv_capacity = 64});
  const ModelGraph decode = build_model_graph(config, {.phase = Phase::kDecode, .kv_capacity = 64});
  ASSERT_EQ(prefill.weights.size(), decode.weights.size());
  for (size_t i = 0; i < prefill.weights.size(); ++i) EXPECT_EQ(prefill.weights[i].name, decode.weights[i].name);
  EXPECT_EQ(prefill.graph.kv_values().size(), 2u * static_cast<size_t>(config.n_layers));
  EXPECT_EQ(prefill.graph.value(prefill.token_ids).type.shape, (SymShape{Symbol::kSeq}));
  EXPECT_EQ(decode.graph.value(decode.token_ids).type.shape, (SymShape{1}));
  EXPECT_EQ(decode.graph.value(decode.logits).type.shape, (SymShape{1, config.vocab_size}));
  EXPECT_NE(prefill.graph.structural_hash(), decode.graph.structural_hash());
  // Rebuilding gives the same hash: the plan cache can key on it.
  EXPECT_EQ(decode.graph.structural_hash(),
            build_model_graph(config, {.phase = Phase::kDecode, .kv_capacity = 64}).graph.structural_hash());
}

TEST(ModelGraph, TiedEmbeddingsDeclareNoLmHead) {
  ModelConfig llama = *preset_config("llama-tiny");
  auto has_lm_head = [](const ModelConfig& c) {
    for (const WeightSpec& w : model_weight_specs(c))
      if (w.name == "lm_head.weight") return true;
    return false;
  };
  EXPECT_TRUE(has_lm_head(llama));
  llama.tie_embeddings = true;
  EXPECT_FALSE(has_lm_head(llama));
  EXPECT_FALSE(has_lm_head(*preset_config("gpt2-tiny")));
}

}  // namespace
}  // namespace djinn
