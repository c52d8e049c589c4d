#include "ops/gemm_peak.hpp"

#include <algorithm>
#include <chrono>
#include <type_traits>

#include "core/buffer.hpp"
#include "ops/matmul.hpp"

namespace zerolora {

template <class In>
double measure_gemm_gflops(Runtime& rt, Index n, int repetitions) {
  Buffer<In> a(static_cast<std::size_t>(n * n)), b(static_cast<std::size_t>(n * n));
  Buffer<float> c(static_cast<std::size_t>(n * n));
  for (Index i = 0; i < n * n; ++i) {
    const float v = 0.001f * static_cast<float>(i % 97);
    if constexpr (std::is_same_v<In, bf16>)
      a[i] = b[i] = to_bf16(v);
    else
      a[i] = b[i] = v;
  }
  auto run = [&] {
    matmul<In, float>(rt, Mat<const In>::dense(a.data(), n, n),
                      Mat<const In>::dense(b.data(), n, n), Mat<float>::dense(c.data(), n, n));
  };
  run();  // primitive creation, page faults
  double best = 1e30;
  for (int r = 0; r < repetitions; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) / best /
         1e9;
}

template double measure_gemm_gflops<bf16>(Runtime&, Index, int);
template double measure_gemm_gflops<float>(Runtime&, Index, int);

}  // namespace zerolora
