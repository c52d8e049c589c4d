#include "ops/gemm_peak.hpp"

#include <algorithm>
#include <chrono>

#include "core/buffer.hpp"
#include "ops/matmul.hpp"

namespace zerolora {

double measure_bf16_gemm_gflops(Runtime& rt, Index n, int repetitions) {
  Buffer<bf16> a(static_cast<std::size_t>(n * n)), b(static_cast<std::size_t>(n * n));
  Buffer<float> c(static_cast<std::size_t>(n * n));
  for (Index i = 0; i < n * n; ++i) a[i] = b[i] = to_bf16(0.001f * static_cast<float>(i % 97));
  auto run = [&] {
    matmul<bf16, float>(rt, Mat<const bf16>::dense(a.data(), n, n),
                        Mat<const bf16>::dense(b.data(), n, n), Mat<float>::dense(c.data(), n, n));
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

}  // namespace zerolora
