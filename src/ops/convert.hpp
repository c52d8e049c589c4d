// Element type conversion of whole arrays (activations to matmul operands and back).
#pragma once

#include <cstring>
#include <type_traits>

#include "core/bf16.hpp"
#include "core/cpu_dispatch.hpp"
#include "core/runtime.hpp"
#include "ops/conventions.hpp"

namespace zerolora {

template <class To, class From>
ZL_CPU_CLONES void convert(Runtime& rt, To* dst /*[n]*/, const From* src /*[n]*/, Index n) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kConvert);
  if constexpr (std::is_same_v<To, From>) {
    if (dst != src) std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(To));
  } else {
#pragma omp parallel for num_threads(rt.threads()) schedule(static) if (n > 32768)
    for (Index i = 0; i < n; ++i) dst[i] = convert_to<To>(src[i]);
  }
}

// Rounds x to bf16 values in place; also writes the bf16 values to `copy` unless it is null.
ZL_CPU_CLONES inline void round_to_bf16(Runtime& rt, float* x /*[n]*/, bf16* copy /*[n] or null*/,
                                        Index n) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kConvert);
#pragma omp parallel for num_threads(rt.threads()) schedule(static) if (n > 32768)
  for (Index i = 0; i < n; ++i) {
    const bf16 b = to_bf16(x[i]);
    x[i] = to_float(b);
    if (copy) copy[i] = b;
  }
}

// Converts a strided matrix block into a dense [rows, cols] array.
template <class To, class From>
ZL_CPU_CLONES void convert_rows(Runtime& rt, To* dst /*[rows, cols]*/, const From* src,
                                Index src_stride, Index rows, Index cols) {
#pragma omp parallel for num_threads(rt.threads()) schedule(static) if (rows * cols > 32768)
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) dst[i * cols + j] = convert_to<To>(src[i * src_stride + j]);
}

}  // namespace zerolora
