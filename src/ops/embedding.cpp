#include "ops/embedding.hpp"

#include "core/cpu_dispatch.hpp"
#include "core/profiler.hpp"

namespace zerolora {

template <class T, class W>
ZL_CPU_CLONES void embedding_forward(Runtime& rt, T* dst /*[M, D]*/,
                                     const std::int32_t* tokens /*[M]*/, const W* table /*[V, D]*/,
                                     Index M, Index D) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kOther);
#pragma omp parallel for num_threads(rt.threads()) schedule(static)
  for (Index i = 0; i < M; ++i) {
    const W* row = table + static_cast<Index>(tokens[i]) * D;
    T* y = dst + i * D;
    for (Index j = 0; j < D; ++j) y[j] = static_cast<T>(to_float(row[j]));
  }
}

template void embedding_forward<float, float>(Runtime&, float*, const std::int32_t*, const float*,
                                              Index, Index);
template void embedding_forward<float, bf16>(Runtime&, float*, const std::int32_t*, const bf16*,
                                             Index, Index);
template void embedding_forward<double, double>(Runtime&, double*, const std::int32_t*,
                                                const double*, Index, Index);

}  // namespace zerolora
