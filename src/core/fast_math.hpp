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

namespace zerolora {

inline float fast_exp(float input) {
  const float x = input < -87.3f ? -87.3f : (input > 88.3f ? 88.3f : input);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const auto bits = static_cast<std::uint32_t>(static_cast<std::int32_t>(n) + 127) << 23;
  return input < -87.3f ? 0.0f : p * std::bit_cast<float>(bits);
}

inline double fast_exp(double x) {
  return std::exp(x);
}

}  // namespace zerolora
