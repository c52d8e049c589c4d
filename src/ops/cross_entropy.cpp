#include "ops/cross_entropy.hpp"

#include <cmath>

#include "core/cpu_dispatch.hpp"
#include "core/fast_math.hpp"
#include "core/profiler.hpp"

namespace zerolora {

template <class T>
ZL_CPU_CLONES double cross_entropy(Runtime& rt, T* logits /*[R, V]*/,
                                   const std::int32_t* targets /*[R]*/, Index R, Index V,
                                   double grad_scale, bool write_grad) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kLoss);
  double total = 0;
#pragma omp parallel for num_threads(rt.threads()) schedule(static) reduction(+ : total)
  for (Index r = 0; r < R; ++r) {
    T* z = logits + r * V;
    const std::int32_t target = targets[r];
    if (target == kIgnoreIndex) {
      if (write_grad)
        for (Index j = 0; j < V; ++j) z[j] = T{0};
      continue;
    }
    T row_max = z[0];
    for (Index j = 1; j < V; ++j) row_max = z[j] > row_max ? z[j] : row_max;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (Index j = 0; j < V; ++j) sum += fast_exp(z[j] - row_max);
    const T lse = row_max + std::log(sum);
    total += static_cast<double>(lse - z[target]);
    if (write_grad) {
      const T scale = static_cast<T>(grad_scale);
#pragma omp simd
      for (Index j = 0; j < V; ++j) z[j] = fast_exp(z[j] - lse) * scale;
      z[target] -= scale;
    }
  }
  return total;
}

template double cross_entropy<float>(Runtime&, float*, const std::int32_t*, Index, Index, double,
                                     bool);
template double cross_entropy<double>(Runtime&, double*, const std::int32_t*, Index, Index, double,
                                      bool);

}  // namespace zerolora
