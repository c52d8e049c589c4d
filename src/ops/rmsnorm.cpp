#include "ops/rmsnorm.hpp"

#include <cmath>

#include "core/cpu_dispatch.hpp"
#include "core/profiler.hpp"

namespace zerolora {

template <class T, class W>
ZL_CPU_CLONES void rmsnorm_forward(Runtime& rt, T* dst /*[M, D]*/, T* rstd /*[M]*/,
                                   const T* src /*[M, D]*/, const W* weight /*[D]*/, Index M,
                                   Index D, double eps) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kNorm);
#pragma omp parallel for num_threads(rt.threads()) schedule(static)
  for (Index i = 0; i < M; ++i) {
    const T* x = src + i * D;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (Index j = 0; j < D; ++j) sum += x[j] * x[j];
    const T r = T{1} / std::sqrt(sum / static_cast<T>(D) + static_cast<T>(eps));
    rstd[i] = r;
    T* y = dst + i * D;
#pragma omp simd
    for (Index j = 0; j < D; ++j) y[j] = x[j] * r * static_cast<T>(to_float(weight[j]));
  }
}

template <class T, class W>
ZL_CPU_CLONES void rmsnorm_backward(Runtime& rt, T* diff_src /*[M, D]*/,
                                    const T* diff_dst /*[M, D]*/, const T* src /*[M, D]*/,
                                    const T* rstd /*[M]*/, const W* weight /*[D]*/, Index M,
                                    Index D, bool accumulate) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kNorm);
#pragma omp parallel for num_threads(rt.threads()) schedule(static)
  for (Index i = 0; i < M; ++i) {
    const T* x = src + i * D;
    const T* dy = diff_dst + i * D;
    T* dx = diff_src + i * D;
    const T r = rstd[i];
    T dot = 0;
#pragma omp simd reduction(+ : dot)
    for (Index j = 0; j < D; ++j) dot += static_cast<T>(to_float(weight[j])) * dy[j] * x[j];
    const T coef = dot * r * r * r / static_cast<T>(D);
    if (accumulate) {
#pragma omp simd
      for (Index j = 0; j < D; ++j)
        dx[j] += r * static_cast<T>(to_float(weight[j])) * dy[j] - x[j] * coef;
    } else {
#pragma omp simd
      for (Index j = 0; j < D; ++j)
        dx[j] = r * static_cast<T>(to_float(weight[j])) * dy[j] - x[j] * coef;
    }
  }
}

#define ZL_INSTANTIATE_RMSNORM(T, W)                                                               \
  template void rmsnorm_forward<T, W>(Runtime&, T*, T*, const T*, const W*, Index, Index, double); \
  template void rmsnorm_backward<T, W>(Runtime&, T*, const T*, const T*, const T*, const W*,       \
                                       Index, Index, bool);
ZL_INSTANTIATE_RMSNORM(float, float)
ZL_INSTANTIATE_RMSNORM(float, bf16)
ZL_INSTANTIATE_RMSNORM(double, double)
#undef ZL_INSTANTIATE_RMSNORM

}  // namespace zerolora
