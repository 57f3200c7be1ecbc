// Shapes: concrete (Shape, int64 dims) and symbolic (SymShape, dims that may name a
// symbol bound per step).
//
// A graph is built once per (model, phase) with symbolic dims, so its structure and
// hash do not change as a decode step's position advances; the executor binds the
// symbols (SymbolBindings) to concrete values for each step.
//   seq   : tokens processed in this step (prompt length for prefill, 1 for decode)
//   past  : tokens already in the KV cache before this step
//   total : past + seq
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace djinn {

enum class Symbol : uint8_t { kNone, kSeq, kPast, kTotal };

const char* symbol_name(Symbol symbol);

struct SymbolBindings {
  int64_t seq = 0;
  int64_t past = 0;
  int64_t value_of(Symbol symbol) const;
};

// One dimension: a constant (symbol == kNone, extent = value) or a symbol.
struct Dim {
  Symbol symbol = Symbol::kNone;
  int64_t value = 0;

  constexpr Dim() = default;
  constexpr Dim(int64_t constant) : value(constant) {}  // NOLINT(implicit)
  constexpr Dim(Symbol s) : symbol(s) {}                // NOLINT(implicit)

  bool is_symbolic() const { return symbol != Symbol::kNone; }
  int64_t resolve(const SymbolBindings& bindings) const {
    return is_symbolic() ? bindings.value_of(symbol) : value;
  }
  friend bool operator==(const Dim&, const Dim&) = default;
};

using Shape = std::vector<int64_t>;

struct SymShape {
  std::vector<Dim> dims;

  SymShape() = default;
  SymShape(std::initializer_list<Dim> d) : dims(d) {}
  explicit SymShape(std::vector<Dim> d) : dims(std::move(d)) {}

  size_t rank() const { return dims.size(); }
  const Dim& operator[](size_t i) const { return dims[i]; }
  const Dim& back() const { return dims.back(); }
  Shape resolve(const SymbolBindings& bindings) const;
  friend bool operator==(const SymShape&, const SymShape&) = default;
};

int64_t num_elements(const Shape& shape);
// "[seq, 768]" / "[4, 768]".
std::string to_string(const SymShape& shape);
std::string to_string(const Shape& shape);

}  // namespace djinn
