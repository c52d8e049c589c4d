#include "ops/convert.hpp"

#include <cstring>
#include <type_traits>

#include "core/cpu_dispatch.hpp"
#include "core/profiler.hpp"

namespace zerolora {

template <class To, class From>
ZL_CPU_CLONES void convert(Runtime& rt, To* dst, const From* src, Index n) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kConvert);
  if constexpr (std::is_same_v<To, From>) {
    if (dst != src) std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(To));
  } else {
#pragma omp parallel for num_threads(rt.threads()) schedule(static) if (n > 32768)
    for (Index i = 0; i < n; ++i) dst[i] = convert_to<To>(src[i]);
  }
}

ZL_CPU_CLONES void round_to_bf16(Runtime& rt, float* x, bf16* copy, Index n) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kConvert);
#pragma omp parallel for num_threads(rt.threads()) schedule(static) if (n > 32768)
  for (Index i = 0; i < n; ++i) {
    const bf16 b = to_bf16(x[i]);
    x[i] = to_float(b);
    if (copy) copy[i] = b;
  }
}

template <class To, class From>
ZL_CPU_CLONES void convert_rows(Runtime& rt, To* dst, const From* src, Index src_stride, Index rows,
                                Index cols) {
#pragma omp parallel for num_threads(rt.threads()) schedule(static) if (rows * cols > 32768)
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) dst[i * cols + j] = convert_to<To>(src[i * src_stride + j]);
}

template void convert<bf16, float>(Runtime&, bf16*, const float*, Index);
template void convert<float, bf16>(Runtime&, float*, const bf16*, Index);
template void convert<float, float>(Runtime&, float*, const float*, Index);
template void convert<bf16, bf16>(Runtime&, bf16*, const bf16*, Index);
template void convert<double, double>(Runtime&, double*, const double*, Index);
template void convert_rows<bf16, float>(Runtime&, bf16*, const float*, Index, Index, Index);
template void convert_rows<float, float>(Runtime&, float*, const float*, Index, Index, Index);

}  // namespace zerolora
