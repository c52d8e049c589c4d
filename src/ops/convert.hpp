// Element type conversion of whole arrays (activations to matmul operands and back).
#pragma once

#include "core/bf16.hpp"
#include "core/runtime.hpp"
#include "ops/conventions.hpp"

namespace zerolora {

// dst (=) [n] = src converted (bf16 by round-to-nearest-even). Instantiated for the pairs the
// kernels use: float/bf16 either way, and every type to itself.
template <class To, class From>
void convert(Runtime& rt, To* dst /*[n]*/, const From* src /*[n]*/, Index n);

// Rounds x to bf16 values in place; also writes the bf16 values to `copy` unless it is null.
void round_to_bf16(Runtime& rt, float* x /*[n]*/, bf16* copy /*[n] or null*/, Index n);

// Converts a strided matrix block into a dense [rows, cols] array.
template <class To, class From>
void convert_rows(Runtime& rt, To* dst /*[rows, cols]*/, const From* src, Index src_stride,
                  Index rows, Index cols);

}  // namespace zerolora
