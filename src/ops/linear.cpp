#include "ops/linear.hpp"

#include <type_traits>

#include "core/profiler.hpp"
#include "ops/convert.hpp"
#include "ops/matmul.hpp"

namespace zerolora {

namespace {
template <class Weight, class Act>
const Weight* as_weight_type(Runtime& rt, const Act* src, const Weight* rounded, Index n,
                             Buffer<Weight>& operand) {
  if constexpr (std::is_same_v<Act, Weight>) {
    return src;
  } else if (rounded) {
    return rounded;
  } else {
    operand.ensure(static_cast<std::size_t>(n));
    convert(rt, operand.data(), src, n);
    return operand.data();
  }
}
}  // namespace

template <class Act, class Weight>
void linear_forward(Runtime& rt, Mat<Act> dst /*[M, out]*/, const Act* src /*[M, in]*/,
                    const Weight* rounded, const Weight* weight /*[out, in]*/, Index in,
                    bool accumulate, Buffer<Weight>& operand) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kMatmul);
  const Index M = dst.rows, out = dst.cols;
  const Weight* a = as_weight_type(rt, src, rounded, M * in, operand);
  matmul<Weight, Act>(rt, Mat<const Weight>::dense(a, M, in),
                      Mat<const Weight>::dense(weight, out, in).t(), dst, 1.0f, accumulate);
}
template <class Act, class Weight>
void linear_backward_data(Runtime& rt, Act* diff_src /*[M, in]*/, const Act* diff_dst /*[M, out]*/,
                          const Weight* rounded, const Weight* weight /*[out, in]*/, Index M,
                          Index out, Index in, Buffer<Weight>& operand) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kMatmul);
  const Weight* a = as_weight_type(rt, diff_dst, rounded, M * out, operand);
  matmul<Weight, Act>(rt, Mat<const Weight>::dense(a, M, out),
                      Mat<const Weight>::dense(weight, out, in), Mat<Act>::dense(diff_src, M, in));
}

template <class Act, class Weight>
void linear_add_bias(Runtime& rt, Mat<Act> dst, const Weight* bias) {
#pragma omp parallel for num_threads(rt.threads()) schedule(static)
  for (Index m = 0; m < dst.rows; ++m)
    for (Index j = 0; j < dst.cols; ++j) dst.at(m, j) += static_cast<Act>(to_float(bias[j]));
}

#define ZL_INSTANTIATE_LINEAR(Act, Weight)                                                   \
  template void linear_add_bias<Act, Weight>(Runtime&, Mat<Act>, const Weight*);             \
  template void linear_forward<Act, Weight>(Runtime&, Mat<Act>, const Act*, const Weight*,   \
                                            const Weight*, Index, bool, Buffer<Weight>&);    \
  template void linear_backward_data<Act, Weight>(Runtime&, Act*, const Act*, const Weight*, \
                                                  const Weight*, Index, Index, Index,        \
                                                  Buffer<Weight>&);
ZL_INSTANTIATE_LINEAR(float, float)
ZL_INSTANTIATE_LINEAR(float, bf16)
ZL_INSTANTIATE_LINEAR(double, double)
#undef ZL_INSTANTIATE_LINEAR

}  // namespace zerolora
