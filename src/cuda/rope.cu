// Rotary position embedding on the device (ops/rope.hpp), rotate_half layout, in place:
//   y[j] = x[j] c - x[j + h] s,   y[j + h] = x[j + h] c + x[j] s,   s negated for backward.
// The cos/sin tables are the CPU's RopeTable values, uploaded: the same angles bit for bit.
#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

// Heads per pass of a thread: their loads issued before any store, so that a thread has
// several in flight (the compiler cannot move a load above a store that may alias it).
constexpr int kHeadsPerPass = 4;

__global__ void rope_kernel(float* x, const std::int32_t* positions, const float* cos_table,
                            const float* sin_table, Index half, Index M, Index row_stride,
                            Index heads, float sign) {
  // A thread per (row, j): the angle's cos and sin read once for all the row's heads.
  ZL_ROWS_COLS(row, j, M, half) {
    const Index p = positions[row];
    const float c = cos_table[p * half + j], s = sign * sin_table[p * half + j];
    float* x1 = x + row * row_stride + j;
    for (Index h0 = 0; h0 < heads; h0 += kHeadsPerPass, x1 += kHeadsPerPass * 2 * half) {
      float a[kHeadsPerPass] = {}, b[kHeadsPerPass] = {};
      ZL_UNROLL for (int u = 0; u < kHeadsPerPass; ++u) {
        if (h0 + u < heads) {
          a[u] = x1[u * 2 * half];
          b[u] = x1[u * 2 * half + half];
        }
      }
      ZL_UNROLL for (int u = 0; u < kHeadsPerPass; ++u) {
        if (h0 + u < heads) {
          x1[u * 2 * half] = a[u] * c - b[u] * s;
          x1[u * 2 * half + half] = b[u] * c + a[u] * s;
        }
      }
    }
  }
}

}  // namespace

void rope_rotate(cudaStream_t s, float* x, const std::int32_t* positions, const float* cos_table,
                 const float* sin_table, Index half, Index M, Index row_stride, Index heads,
                 bool inverse) {
  if (M == 0) return;
  const int threads = half < 256 ? static_cast<int>((half + 31) / 32 * 32) : 256;
  ZL_LAUNCH(rope_kernel, grid_rows_cols(M, half, threads), threads, s)
  (x, positions, cos_table, sin_table, half, M, row_stride, heads, inverse ? -1.0f : 1.0f);
  check_launch("rope_rotate", M, heads * 2 * half);
}

}  // namespace zerolora::cuda
