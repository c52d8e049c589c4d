// A projection by a frozen base weight W [out, in] (HF nn.Linear layout, no bias):
//   forward        dst = src W^T            (=, or += when accumulate: residual adds)
//   backward data  diff_src = diff_dst W    (=)
// There is no weight gradient: base weights are frozen and get no gradient buffers.
// When the weight type differs from the activation type (bf16 mode) the activation operand
// is rounded into `operand` first, unless the caller has its rounding already (`rounded`, else
// null); accumulation stays fp32.
#pragma once

#include "core/buffer.hpp"
#include "core/runtime.hpp"
#include "ops/matrix.hpp"

namespace zerolora {

template <class Act, class Weight>
void linear_forward(Runtime& rt, Mat<Act> dst /*[M, out]*/, const Act* src /*[M, in]*/,
                    const Weight* rounded /*[M, in] or null*/, const Weight* weight /*[out, in]*/,
                    Index in, bool accumulate, Buffer<Weight>& operand);

// dst[m, :] += bias for every row: a Linear layer's bias (Qwen2's q, k, v). Frozen, so it has
// no backward: it moves the output, not any gradient.
template <class Act, class Weight>
void linear_add_bias(Runtime& rt, Mat<Act> dst /*[M, out]*/, const Weight* bias /*[out]*/);

template <class Act, class Weight>
void linear_backward_data(Runtime& rt, Act* diff_src /*[M, in]*/, const Act* diff_dst /*[M, out]*/,
                          const Weight* rounded /*[M, out] or null*/,
                          const Weight* weight /*[out, in]*/, Index M, Index out, Index in,
                          Buffer<Weight>& operand);

}  // namespace zerolora
