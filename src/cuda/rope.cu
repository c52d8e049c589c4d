// Rotary position embedding on the device (ops/rope.hpp), rotate_half layout, in place:
//   y[j] = x[j] c - x[j + h] s,   y[j + h] = x[j + h] c + x[j] s,   s negated for backward.
// The cos/sin tables are the CPU's RopeTable values, uploaded: the same angles bit for bit.
#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

__global__ void rope_kernel(float* x, const std::int32_t* positions, const float* cos_table,
                            const float* sin_table, Index half, Index M, Index row_stride,
                            Index heads, float sign) {
  const Index per_row = heads * half;
  const Index total = M * per_row;
  ZL_GRID_STRIDE(i, total) {
    const Index row = i / per_row, rest = i % per_row;
    const Index h = rest / half, j = rest % half;
    const Index p = positions[row];
    const float c = cos_table[p * half + j], s = sign * sin_table[p * half + j];
    float* x1 = x + row * row_stride + h * 2 * half;
    const float a = x1[j], b = x1[j + half];
    x1[j] = a * c - b * s;
    x1[j + half] = b * c + a * s;
  }
}

}  // namespace

void rope_rotate(cudaStream_t s, float* x, const std::int32_t* positions, const float* cos_table,
                 const float* sin_table, Index half, Index M, Index row_stride, Index heads,
                 bool inverse) {
  if (M == 0) return;
  ZL_LAUNCH(rope_kernel, grid_for(M * heads * half, 256), 256, s)
  (x, positions, cos_table, sin_table, half, M, row_stride, heads, inverse ? -1.0f : 1.0f);
  check_launch("rope_rotate", M, heads * 2 * half);
}

}  // namespace zerolora::cuda
