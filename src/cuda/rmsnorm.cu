// RMSNorm forward and backward on the device (ops/rmsnorm.hpp), one block per row:
//   dst = src * rstd * w, rstd = 1 / sqrt(mean(src^2) + eps)
//   dx (= or +=) rstd * (w * dy) - x * rstd^3 * sum_j(w_j dy_j x_j) / D
// IEEE division and square root (no fast math), as the CPU computes them.
#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

constexpr int kThreads = 256;

template <class W>
__global__ void rmsnorm_forward_kernel(float* dst, float* rstd, const float* src, const W* weight,
                                       Index M, Index D, float eps, Bf16Bits* rounded) {
  __shared__ float shared[32];  // block_sum's scratch
  for (Index row = blockIdx.x; row < M; row += gridDim.x) {
    const float* x = src + row * D;
    float sum = 0.0f;
    for (Index j = threadIdx.x; j < D; j += blockDim.x) sum += x[j] * x[j];
    sum = block_sum(sum, shared);
    const float r = 1.0f / sqrtf(sum / static_cast<float>(D) + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    float* y = dst + row * D;
    for (Index j = threadIdx.x; j < D; j += blockDim.x) {
      const float v = x[j] * r * load_weight(weight, j);
      y[j] = v;
      if (rounded) rounded[row * D + j] = float_to_bf16(v);
    }
  }
}

template <class W>
__global__ void rmsnorm_backward_kernel(float* diff_src, const float* diff_dst, const float* src,
                                        const float* rstd, const W* weight, Index M, Index D,
                                        bool accumulate) {
  __shared__ float shared[32];  // block_sum's scratch
  for (Index row = blockIdx.x; row < M; row += gridDim.x) {
    const float* x = src + row * D;
    const float* dy = diff_dst + row * D;
    float* dx = diff_src + row * D;
    const float r = rstd[row];
    float dot = 0.0f;
    for (Index j = threadIdx.x; j < D; j += blockDim.x)
      dot += load_weight(weight, j) * dy[j] * x[j];
    dot = block_sum(dot, shared);
    const float coef = dot * r * r * r / static_cast<float>(D);
    for (Index j = threadIdx.x; j < D; j += blockDim.x) {
      const float v = r * load_weight(weight, j) * dy[j] - x[j] * coef;
      dx[j] = accumulate ? dx[j] + v : v;
    }
  }
}

}  // namespace

template <class W>
void rmsnorm_forward(cudaStream_t s, float* dst, float* rstd, const float* src, const W* weight,
                     Index M, Index D, float eps, Bf16Bits* rounded) {
  if (M == 0) return;
  ZL_LAUNCH(rmsnorm_forward_kernel<W>, grid_for(M, 1), kThreads, s)
  (dst, rstd, src, weight, M, D, eps, rounded);
  check_launch("rmsnorm_forward", M, D);
}

template <class W>
void rmsnorm_backward(cudaStream_t s, float* diff_src, const float* diff_dst, const float* src,
                      const float* rstd, const W* weight, Index M, Index D, bool accumulate) {
  if (M == 0) return;
  ZL_LAUNCH(rmsnorm_backward_kernel<W>, grid_for(M, 1), kThreads, s)
  (diff_src, diff_dst, src, rstd, weight, M, D, accumulate);
  check_launch("rmsnorm_backward", M, D);
}

template void rmsnorm_forward<float>(cudaStream_t, float*, float*, const float*, const float*,
                                     Index, Index, float, Bf16Bits*);
template void rmsnorm_forward<Bf16Bits>(cudaStream_t, float*, float*, const float*, const Bf16Bits*,
                                        Index, Index, float, Bf16Bits*);
template void rmsnorm_backward<float>(cudaStream_t, float*, const float*, const float*,
                                      const float*, const float*, Index, Index, bool);
template void rmsnorm_backward<Bf16Bits>(cudaStream_t, float*, const float*, const float*,
                                         const float*, const Bf16Bits*, Index, Index, bool);

}  // namespace zerolora::cuda
