// Mat<T>: a strided 2-D view (rows x cols, element (i, j) at data[i*rs + j*cs]).
// Transposes and column blocks are views, so a fused QKV buffer's Q part or a weight's
// transpose costs nothing.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ops/conventions.hpp"

namespace zerolora {

// Whether [a, a + bytes) and [b, b + bytes) share a byte; compared as addresses, since < between
// pointers into different allocations is unspecified in C++.
inline bool byte_ranges_overlap(const void* a, const void* b, std::size_t bytes) {
  const auto x = reinterpret_cast<std::uintptr_t>(a), y = reinterpret_cast<std::uintptr_t>(b);
  return bytes > 0 && x < y + bytes && y < x + bytes;
}

template <class T>
struct Mat {
  T* data;
  Index rows, cols;
  Index rs, cs;  // row stride, column stride (elements)

  // A dense row-major matrix.
  static Mat dense(T* data, Index rows, Index cols) { return {data, rows, cols, cols, 1}; }

  Mat t() const { return {data, cols, rows, cs, rs}; }
  Mat block(Index r0, Index c0, Index nrows, Index ncols) const {
    return {data + r0 * rs + c0 * cs, nrows, ncols, rs, cs};
  }
  Mat<const T> as_const() const { return {data, rows, cols, rs, cs}; }
  operator Mat<const T>() const { return as_const(); }
  T& at(Index i, Index j) const { return data[i * rs + j * cs]; }
};

}  // namespace zerolora
