#include "ops/swiglu.hpp"

#include <cmath>

#include "core/cpu_dispatch.hpp"
#include "core/fast_math.hpp"
#include "core/profiler.hpp"

namespace zerolora {

template <class T>
ZL_CPU_CLONES void swiglu_forward(Runtime& rt, T* dst /*[M, I]*/, const T* gate_up /*[M, 2I]*/,
                                  Index M, Index I) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kSwiglu);
#pragma omp parallel for num_threads(rt.threads()) schedule(static)
  for (Index i = 0; i < M; ++i) {
    const T* g = gate_up + i * 2 * I;
    const T* u = g + I;
    T* y = dst + i * I;
#pragma omp simd
    for (Index j = 0; j < I; ++j) y[j] = g[j] / (T{1} + fast_exp(-g[j])) * u[j];
  }
}

template <class T>
ZL_CPU_CLONES void swiglu_backward(Runtime& rt, T* diff_gate_up /*[M, 2I]*/,
                                   const T* diff_dst /*[M, I]*/, const T* gate_up /*[M, 2I]*/,
                                   Index M, Index I) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kSwiglu);
#pragma omp parallel for num_threads(rt.threads()) schedule(static)
  for (Index i = 0; i < M; ++i) {
    const T* g = gate_up + i * 2 * I;
    const T* u = g + I;
    const T* dy = diff_dst + i * I;
    T* dg = diff_gate_up + i * 2 * I;
    T* du = dg + I;
#pragma omp simd
    for (Index j = 0; j < I; ++j) {
      const T s = T{1} / (T{1} + fast_exp(-g[j]));
      dg[j] = dy[j] * u[j] * s * (T{1} + g[j] * (T{1} - s));
      du[j] = dy[j] * g[j] * s;
    }
  }
}

#define ZL_INSTANTIATE_SWIGLU(T)                                         \
  template void swiglu_forward<T>(Runtime&, T*, const T*, Index, Index); \
  template void swiglu_backward<T>(Runtime&, T*, const T*, const T*, Index, Index);
ZL_INSTANTIATE_SWIGLU(float)
ZL_INSTANTIATE_SWIGLU(double)
#undef ZL_INSTANTIATE_SWIGLU

}  // namespace zerolora
