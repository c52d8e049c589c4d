// Explicit SIMD for the hand-written kernels, in GCC's portable vector types: a Vec<T> is 64
// bytes (16 floats or 8 doubles) and every operation on it is a vector operation by
// construction, not by the auto-vectoriser's judgement. Inside a ZL_CPU_CLONES kernel each
// clone lowers them to its instruction set: one zmm register per Vec on x86-64-v4 (AVX-512),
// two ymm on v3 (AVX2 + FMA), four xmm on the baseline. Every helper is always inlined, so a
// Vec never crosses a call boundary (where its ABI would differ between clones).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <utility>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#include "core/bf16.hpp"
#include "core/cpu_dispatch.hpp"
#include "core/fast_math.hpp"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // see above: no Vec is ever passed out of line

namespace zerolora::simd {

// Denormal floats and doubles flushed to zero, as inputs and results, on this thread for the
// scope's life (the previous mode is restored). A denormal result costs the CPU a microcode
// assist of ~100 cycles; attention makes many (probabilities near e^-87 times gradients), and
// in a real model's step they halved the kernel's speed. Values below 1.2e-38 only.
class FlushDenormals {
 public:
#if defined(__SSE__)
  FlushDenormals() : saved_(_mm_getcsr()) {
    _mm_setcsr(saved_ | kFlushToZero | kDenormalsAreZero);
  }
  ~FlushDenormals() {
    _mm_setcsr(saved_);
  }
#endif
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
#if defined(__SSE__)
  static constexpr unsigned kFlushToZero = 0x8000, kDenormalsAreZero = 0x0040;  // MXCSR bits
  unsigned saved_;
#endif
};

template <class T>
struct VecTraits;
template <>
struct VecTraits<float> {
  typedef float type __attribute__((vector_size(64)));
  typedef std::int32_t bits __attribute__((vector_size(64)));  // exp's exponent arithmetic
};
template <>
struct VecTraits<double> {
  typedef double type __attribute__((vector_size(64)));
};

template <class T>
using Vec = typename VecTraits<T>::type;
template <class T>
inline constexpr int kLanes = static_cast<int>(64 / sizeof(T));

// Unaligned load and store (memcpy compiles to one vector move).
template <class T>
ZL_INLINE Vec<T> load(const T* p) {
  Vec<T> v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <class T>
ZL_INLINE void store(T* p, Vec<T> v) {
  __builtin_memcpy(p, &v, sizeof v);
}
template <class T>
ZL_INLINE Vec<T> splat(T x) {
  return Vec<T>{} + x;
}
// Lane i holds first + i.
template <class T>
ZL_INLINE Vec<T> iota(T first) {
  Vec<T> v;
  for (int i = 0; i < kLanes<T>; ++i) v[i] = first + static_cast<T>(i);
  return v;
}

template <class V>
ZL_INLINE V max(V a, V b) {
  return a > b ? a : b;
}

namespace detail {
// v rotated by K lanes: lane i holds v[(i + K) mod lanes].
template <std::size_t K, class V, std::size_t... I>
ZL_INLINE V rotated(V v, std::index_sequence<I...>) {
  return __builtin_shufflevector(v, v, static_cast<int>((I + K) % sizeof...(I))...);
}
// Every lane ends up holding op over all lanes: log2(lanes) rotate-and-combine steps, each
// lane's partial result doubling in span, instead of lanes - 1 dependent scalar steps.
// (kMax: the maximum; else the sum. No lambda: every callee of a clone must be inlined.)
template <std::size_t K, bool kMax, class V>
ZL_INLINE V all_lanes(V v) {
  constexpr std::size_t N = sizeof(V) / sizeof(v[0]);
  const V other = rotated<K>(v, std::make_index_sequence<N>{});
  v = kMax ? max(v, other) : v + other;
  if constexpr (K > 1) return all_lanes<K / 2, kMax>(v);
  return v;
}
}  // namespace detail

// The maximum and the sum of one vector's lanes (V: a Vec<float> or Vec<double>, deduced).
template <class V>
ZL_INLINE auto horizontal_max(V v) {
  constexpr std::size_t N = sizeof(V) / sizeof(v[0]);
  return detail::all_lanes<N / 2, true>(v)[0];
}
template <class V>
ZL_INLINE auto horizontal_sum(V v) {
  constexpr std::size_t N = sizeof(V) / sizeof(v[0]);
  return detail::all_lanes<N / 2, false>(v)[0];
}

namespace detail {
// e^x for x already in [-87.3, 88.3]: Cody-Waite reduction x = n ln2 + r, a degree-6
// polynomial for e^r, 2^n from exponent bits.
ZL_INLINE Vec<float> exp_in_range(Vec<float> x) {
  using namespace exp_detail;
  using Bits = VecTraits<float>::bits;
  const Vec<float> shifter = splat(12582912.0f);
  const Vec<float> t = x * kLog2e + shifter;
  const Vec<float> n = t - shifter;
  const Vec<float> r = (x - n * kLn2High) - n * kLn2Low;
  const Bits exponent = ((__builtin_bit_cast(Bits, t) - 0x4B400000) + 127) << 23;
  return taylor(r) * __builtin_bit_cast(Vec<float>, exponent);
}
}  // namespace detail

// e^x, the vector form of fast_math.hpp's fast_exp (same reduction and polynomial): relative
// error below 2.5e-7 (about 2 ulp; tests/test_ops.cpp measures 2.45e-7 where the polynomial
// runs without FMA) on [-87.3, 88.3], 0 below (also for -inf), e^88.3 above.
// Rounding x log2(e) to an integer by adding 1.5 * 2^23 rounds to nearest-even, as nearbyint
// does, and leaves the integer in the low mantissa bits.
ZL_INLINE Vec<float> exp(Vec<float> input) {
  const Vec<float> lo = splat(-87.3f), hi = splat(88.3f);
  const Vec<float> x = input < lo ? lo : (input > hi ? hi : input);
  return input < lo ? Vec<float>{} : detail::exp_in_range(x);
}
// e^x for x <= 0 (-inf included; NaN stays NaN), the same values as exp with two operations
// fewer: softmax numerators, whose arguments (a score minus its row's maximum or log-sum-exp)
// never exceed 0.
ZL_INLINE Vec<float> exp_nonpositive(Vec<float> input) {
  const Vec<float> lo = splat(-87.3f);
  return input < lo ? Vec<float>{} : detail::exp_in_range(max(lo, input));  // max(lo, NaN): NaN
}
// Doubles are for finite-difference checks: the exact exp per lane.
ZL_INLINE Vec<double> exp(Vec<double> x) {
  for (int i = 0; i < kLanes<double>; ++i) x[i] = __builtin_exp(x[i]);
  return x;
}
ZL_INLINE Vec<double> exp_nonpositive(Vec<double> x) {
  return exp(x);
}

// Rounding to bf16 and back (--attn_softmax_bf16), as core/bf16.hpp's to_bf16: to nearest,
// ties to even; NaN stays a (quiet) NaN.
ZL_INLINE Vec<float> round_to_bf16(Vec<float> v) {
  typedef std::uint32_t Bits __attribute__((vector_size(64)));
  const Bits u = __builtin_bit_cast(Bits, v);
  const Bits rounded = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  const Bits nan = (u | 0x400000u) & 0xffff0000u;
  return __builtin_bit_cast(Vec<float>, (u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}
ZL_INLINE Vec<double> round_to_bf16(Vec<double> v) {
  for (int i = 0; i < kLanes<double>; ++i)
    v[i] = static_cast<double>(to_float(to_bf16(static_cast<float>(v[i]))));
  return v;
}

namespace detail {
// One level of transpose_sum: a and b each hold `per` = N / C sources with C partial sums
// each; the result holds 2 * per sources (a's, then b's) with C / 2 partials each. `half`
// picks the first or the second half of each source's partials; the two picks are added.
constexpr int fold_lane(int N, int C, int out_lane, int half) {
  const int h = C / 2, source = out_lane / h, partial = out_lane % h, per = N / C;
  const int base = source < per ? source * C : N + (source - per) * C;
  return base + half * h + partial;
}
template <class T, int C, std::size_t... O>
ZL_INLINE Vec<T> fold(Vec<T> a, Vec<T> b, std::index_sequence<O...>) {
  constexpr int N = kLanes<T>;
  return __builtin_shufflevector(a, b, fold_lane(N, C, static_cast<int>(O), 0)...) +
         __builtin_shufflevector(a, b, fold_lane(N, C, static_cast<int>(O), 1)...);
}
template <class T, int C>
ZL_INLINE void fold_level(Vec<T>* v) {
  constexpr int count = C;  // vectors entering this level (kLanes sources, C partials each)
  for (int k = 0; k < count / 2; ++k)
    v[k] = fold<T, C>(v[2 * k], v[2 * k + 1], std::make_index_sequence<kLanes<T>>{});
  if constexpr (C > 2) fold_level<T, C / 2>(v);
}
}  // namespace detail

// The lane sums of kLanes vectors at once: lane i of the result is the sum of v[i]'s lanes.
// log2(kLanes) levels of shuffles and adds (kLanes - 1 adds of pairs in all), where summing
// each vector on its own would take kLanes times as many. Overwrites v.
template <class T>
ZL_INLINE Vec<T> transpose_sum(Vec<T>* v) {
  detail::fold_level<T, kLanes<T>>(v);
  return v[0];
}

}  // namespace zerolora::simd

#pragma GCC diagnostic pop
