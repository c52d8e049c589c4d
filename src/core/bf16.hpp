// bfloat16 and IEEE half: storage types and conversions to and from float.
// float -> bf16 rounds to nearest even, as torch's `.to(torch.bfloat16)` does.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace zerolora {

struct bf16 {
  std::uint16_t bits;
};
static_assert(sizeof(bf16) == 2);

inline float to_float(bf16 x) {
  return std::bit_cast<float>(std::uint32_t{x.bits} << 16);
}
inline float to_float(float x) {
  return x;
}
inline double to_float(double x) {
  return x;
}

inline bf16 to_bf16(float x) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<std::uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return bf16{static_cast<std::uint16_t>(u >> 16)};
}

// IEEE 754 binary16 bits -> float (exact).
inline float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t{h & 0x8000u} << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu;
  const std::uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float value = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -value : value;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// Element conversion used by templated kernels: T from float/double/bf16.
template <class To>
inline To convert_to(float x) {
  if constexpr (std::is_same_v<To, bf16>)
    return to_bf16(x);
  else
    return static_cast<To>(x);
}
template <class To>
inline To convert_to(double x) {
  if constexpr (std::is_same_v<To, bf16>)
    return to_bf16(static_cast<float>(x));
  else
    return static_cast<To>(x);
}
template <class To>
inline To convert_to(bf16 x) {
  return convert_to<To>(to_float(x));
}

}  // namespace zerolora
