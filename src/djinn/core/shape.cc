#include "djinn/core/shape.h"

#include <fmt/format.h>

#include "djinn/core/check.h"

namespace djinn {

const char* symbol_name(Symbol symbol) {
  switch (symbol) {
    case Symbol::kNone: return "";
    case Symbol::kSeq: return "seq";
    case Symbol::kPast: return "past";
    case Symbol::kTotal: return "total";
  }
  return "?";
}

int64_t SymbolBindings::value_of(Symbol symbol) const {
  switch (symbol) {
    case Symbol::kNone: break;
    case Symbol::kSeq: return seq;
    case Symbol::kPast: return past;
    case Symbol::kTotal: return past + seq;
  }
  DJINN_ASSERT(false, "value_of(kNone)");
}

Shape SymShape::resolve(const SymbolBindings& bindings) const {
  Shape out(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) out[i] = dims[i].resolve(bindings);
  return out;
}

int64_t num_elements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string to_string(const SymShape& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.rank(); ++i) {
    if (i) out += ", ";
    const Dim& d = shape[i];
    out += d.is_symbolic() ? std::string(symbol_name(d.symbol)) : std::to_string(d.value);
  }
  return out + "]";
}

std::string to_string(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

}  // namespace djinn
