// RMSNorm, matching HF LlamaRMSNorm computed in fp32:
//   dst = src * rstd * weight,   rstd = 1 / sqrt(mean(src^2) + eps)   (per row)
// Forward saves rstd [M] for backward.
#pragma once

#include "core/bf16.hpp"
#include "core/runtime.hpp"
#include "ops/conventions.hpp"

namespace zerolora {

template <class T, class W>
void rmsnorm_forward(Runtime& rt, T* dst /*[M, D]*/, T* rstd /*[M]*/, const T* src /*[M, D]*/,
                     const W* weight /*[D]*/, Index M, Index D, double eps);

// diff_src (=, or += when accumulate: the residual stream) of
//   dx = rstd * (w * dy) - x * rstd^3 * sum_j(w_j dy_j x_j) / D
// The norm weight is frozen: it gets no gradient.
template <class T, class W>
void rmsnorm_backward(Runtime& rt, T* diff_src /*[M, D]*/, const T* diff_dst /*[M, D]*/,
                      const T* src /*[M, D]*/, const T* rstd /*[M]*/, const W* weight /*[D]*/,
                      Index M, Index D, bool accumulate);

}  // namespace zerolora
