#include "djinn/graph/op.h"

namespace djinn {

std::string_view op_name(OpKind op) {
  switch (op) {
#define DJINN_OP_NAME(name, str, arity, traits) \
  case OpKind::k##name: return str;
    DJINN_OP_TABLE(DJINN_OP_NAME)
#undef DJINN_OP_NAME
  }
  return "?";
}

std::optional<OpKind> parse_op(std::string_view name) {
#define DJINN_OP_PARSE(n, str, arity, traits) \
  if (name == str) return OpKind::k##n;
  DJINN_OP_TABLE(DJINN_OP_PARSE)
#undef DJINN_OP_PARSE
  return std::nullopt;
}

int op_arity(OpKind op) {
  switch (op) {
#define DJINN_OP_ARITY(name, str, arity, traits) \
  case OpKind::k##name: return arity;
    DJINN_OP_TABLE(DJINN_OP_ARITY)
#undef DJINN_OP_ARITY
  }
  return 0;
}

uint32_t op_traits(OpKind op) {
  switch (op) {
#define DJINN_OP_TRAITS(name, str, arity, traits) \
  case OpKind::k##name: return traits;
    DJINN_OP_TABLE(DJINN_OP_TRAITS)
#undef DJINN_OP_TRAITS
  }
  return 0;
}

}  // namespace djinn
