// A Linear layer's bias added to every row on the device (ops/linear.hpp's linear_add_bias).
#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

template <class W>
__global__ void add_bias_kernel(float* x, Index row_stride, const W* bias, Index M, Index N) {
  ZL_ROWS_COLS(row, j, M, N) x[row * row_stride + j] += load_weight(bias, j);
}

}  // namespace

template <class W>
void add_bias(cudaStream_t s, float* x, Index row_stride, const W* bias, Index M, Index N) {
  if (M == 0 || N == 0) return;
  ZL_LAUNCH(add_bias_kernel<W>, grid_rows_cols(M, N, 256), 256, s)(x, row_stride, bias, M, N);
  check_launch("add_bias", M, N);
}

template void add_bias<float>(cudaStream_t, float*, Index, const float*, Index, Index);
template void add_bias<Bf16Bits>(cudaStream_t, float*, Index, const Bf16Bits*, Index, Index);

}  // namespace zerolora::cuda
