// OpKind and per-op facts generated from the op table (op_table.h), and OpAttrs:
// the attributes any op may carry, as one flat struct so that hashing and
// serialisation treat every op alike.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "djinn/graph/op_table.h"

namespace djinn {

enum OpTrait : uint32_t {
  kElementwise = 1u << 0,
  kNormalization = 1u << 1,
  kWritesKv = 1u << 2,       // writes the session's KV cache (a side effect)
  kReadsKv = 1u << 3,        // reads the session's KV cache
  kAliasesInput0 = 1u << 4,  // the output is input 0's memory, updated in place
};

enum class OpKind : uint8_t {
#define DJINN_OP_ENUM(name, str, arity, traits) k##name,
  DJINN_OP_TABLE(DJINN_OP_ENUM)
#undef DJINN_OP_ENUM
};

inline constexpr int kNumOps = 0
#define DJINN_OP_COUNT(name, str, arity, traits) +1
    DJINN_OP_TABLE(DJINN_OP_COUNT)
#undef DJINN_OP_COUNT
    ;

std::string_view op_name(OpKind op);
std::optional<OpKind> parse_op(std::string_view name);
int op_arity(OpKind op);
uint32_t op_traits(OpKind op);
inline bool op_has_trait(OpKind op, OpTrait trait) { return (op_traits(op) & trait) != 0; }

// Attributes; an op reads only the fields its comment in op_table.h names, the rest
// stay at their defaults (so the structural hash is stable).
struct OpAttrs {
  bool transpose_b = false;  // matmul
  float eps = 0.0f;          // layernorm, rmsnorm
  int64_t start = 0;         // slice
  int64_t length = 0;        // slice
  int64_t n_heads = 0;       // attention (rope: heads are inferred from width / head_dim)
  int64_t n_kv_heads = 0;    // attention
  int64_t head_dim = 0;      // attention, rope
  float scale = 0.0f;        // attention: multiplies q.k
  float rope_theta = 0.0f;   // rope
  friend bool operator==(const OpAttrs&, const OpAttrs&) = default;
};

}  // namespace djinn
