// Finite-value checks: the guard against training on, or writing, NaN and Inf.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/bf16.hpp"
#include "core/runtime.hpp"
#include "core/types.hpp"

namespace zerolora {

inline bool is_finite_value(float v) {
  return std::isfinite(v);
}
inline bool is_finite_value(double v) {
  return std::isfinite(v);
}
inline bool is_finite_value(bf16 v) {
  return (v.bits & 0x7f80u) != 0x7f80u;  // exponent all ones: Inf or NaN
}

// Index of the first non-finite value of data[0, n), or -1 when all are finite. One parallel
// pass; cheap next to any matmul over the same values.
template <class T>
Index first_nonfinite(Runtime& rt, const T* data, Index n) {
  Index first = std::numeric_limits<Index>::max();
#pragma omp parallel for num_threads(rt.threads()) schedule(static) reduction(min : first)
  for (Index i = 0; i < n; ++i)
    if (!is_finite_value(data[i])) first = std::min(first, i);
  return first == std::numeric_limits<Index>::max() ? Index{-1} : first;
}

// "nan", "inf" or "-inf", for messages.
template <class T>
const char* nonfinite_name(T value) {
  const float v = to_float(value);
  return std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf";
}

}  // namespace zerolora
