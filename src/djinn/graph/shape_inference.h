// Shape and dtype inference for one op over symbolic shapes. Used by Graph when a
// node is added, and by anything that must validate a graph it did not build.
#pragma once

#include <span>

#include "djinn/core/status.h"
#include "djinn/graph/graph.h"

namespace djinn {

// The output type of `op` applied to inputs of the given types, or an
// invalid-argument Status naming the op and the offending shapes.
Result<ValueType> infer_output_type(OpKind op, const OpAttrs& attrs, std::span<const ValueType> inputs);

}  // namespace djinn
