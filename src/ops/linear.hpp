// A projection by a frozen base weight W [out, in] (HF nn.Linear layout, no bias):
//   forward        dst = src W^T            (=, or += when accumulate: residual adds)
//   backward data  diff_src = diff_dst W    (=)
// There is no weight gradient: base weights are frozen and get no gradient buffers.
// When the weight type differs from the activation type (bf16 mode) the activation operand
// is rounded into `operand` first; accumulation stays fp32.
#pragma once

#include <type_traits>

#include "core/buffer.hpp"
#include "ops/convert.hpp"
#include "ops/matmul.hpp"

namespace zerolora {

namespace detail {
template <class Weight, class Act>
const Weight* as_weight_type(Runtime& rt, const Act* src, Index n, Buffer<Weight>& operand) {
  if constexpr (std::is_same_v<Act, Weight>) {
    return src;
  } else {
    operand.ensure(static_cast<std::size_t>(n));
    convert(rt, operand.data(), src, n);
    return operand.data();
  }
}
}  // namespace detail

template <class Act, class Weight>
void linear_forward(Runtime& rt, Mat<Act> dst /*[M, out]*/, const Act* src /*[M, in]*/,
                    const Weight* weight /*[out, in]*/, Index in, bool accumulate,
                    Buffer<Weight>& operand) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kMatmul);
  const Index M = dst.rows, out = dst.cols;
  const Weight* a = detail::as_weight_type(rt, src, M * in, operand);
  matmul<Weight, Act>(rt, Mat<const Weight>::dense(a, M, in),
                      Mat<const Weight>::dense(weight, out, in).t(), dst, 1.0f, accumulate);
}

template <class Act, class Weight>
void linear_backward_data(Runtime& rt, Act* diff_src /*[M, in]*/, const Act* diff_dst /*[M, out]*/,
                          const Weight* weight /*[out, in]*/, Index M, Index out, Index in,
                          Buffer<Weight>& operand) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kMatmul);
  const Weight* a = detail::as_weight_type(rt, diff_dst, M * out, operand);
  matmul<Weight, Act>(rt, Mat<const Weight>::dense(a, M, out),
                      Mat<const Weight>::dense(weight, out, in), Mat<Act>::dense(diff_src, M, in));
}

}  // namespace zerolora
