// exp() that vectorizes: inside `#pragma omp simd` loops the compiler turns this into AVX-512
// code, where std::exp stays a scalar call (glibc's vector variants need -ffast-math). Cody-
// Waite reduction x = n ln2 + r, |r| <= ln2/2, then a degree-6 polynomial for e^r and 2^n by
// exponent bits: relative error below 2.3e-7 (2 ulp) on [-87.3, 88.3]; below that it returns
// 0, above it e^88.3 (~2e38) stands in for overflow. Doubles keep std::exp: they are for
// finite-difference checks.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

#include "core/cpu_dispatch.hpp"

namespace zerolora {

// The reduction's constants and e^r's Taylor coefficients, highest degree first (shared with
// ops/simd.hpp's vector exp).
namespace exp_detail {
inline constexpr float kLog2e = 1.44269504088896341f;
inline constexpr float kLn2High = 0.693145751953125f;  // ln 2 = kLn2High + kLn2Low
inline constexpr float kLn2Low = 1.42860682030941723e-6f;
inline constexpr float kTaylor[] = {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f,
                                    0.5f,          1.0f,          1.0f};
// p(r) by Horner's rule, for a float or a vector of floats (always inlined: no vector ABI).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
template <class V>
ZL_INLINE V taylor(V r) {
  V p = V{} + kTaylor[0];
  for (int i = 1; i < 7; ++i) p = p * r + kTaylor[i];
  return p;
}
#pragma GCC diagnostic pop
}  // namespace exp_detail

inline float fast_exp(float input) {
  using namespace exp_detail;
  const float x = input < -87.3f ? -87.3f : (input > 88.3f ? 88.3f : input);
  const float n = std::nearbyint(x * kLog2e);
  const float r = (x - n * kLn2High) - n * kLn2Low;
  const auto bits = static_cast<std::uint32_t>(static_cast<std::int32_t>(n) + 127) << 23;
  return input < -87.3f ? 0.0f : taylor(r) * std::bit_cast<float>(bits);
}

inline double fast_exp(double x) {
  return std::exp(x);
}

}  // namespace zerolora
