// Counter-based random numbers: every draw is a pure function of (key, counter), so a value
// can be regenerated in backward without storing it and never depends on thread count or
// world size. The mixer is splitmix64's finaliser (Steele, Lea, Flood 2014).
#pragma once

#include <cmath>
#include <cstdint>

namespace zerolora {

inline std::uint64_t mix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Combines several key parts into one 64-bit key (order matters).
inline std::uint64_t hash_combine(std::uint64_t key, std::uint64_t part) {
  return mix64(key ^ (part + 0x632be59bd9b4e019ull + (key << 6) + (key >> 2)));
}

// Uniform in [0, 1) with 24 random bits: exact in float.
inline float uniform01(std::uint64_t bits) {
  return static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
}

// A sequential stream on top of the counter-based mixer, for initialisation.
class CounterRng {
 public:
  explicit CounterRng(std::uint64_t key) : key_(key) {}
  std::uint64_t next_u64() { return mix64(key_ ^ mix64(counter_++)); }
  // Uniform in [0, 1) with 53 bits.
  double next_double() {
    return static_cast<double>(next_u64() >> 11) * (1.0 / 9007199254740992.0);
  }
  double uniform(double lo, double hi) { return lo + (hi - lo) * next_double(); }
  // Standard normal by Box-Muller (the second value is dropped: simplicity over speed).
  double normal() {
    double u1 = next_double();
    while (u1 <= 0.0) u1 = next_double();
    const double u2 = next_double();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

 private:
  std::uint64_t key_;
  std::uint64_t counter_ = 0;
};

}  // namespace zerolora
