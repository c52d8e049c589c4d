// SwiGLU on the device (ops/swiglu.hpp): dst = silu(g) * u over gate_up [M, 2I] (gate first);
// backward d g = dy u s (1 + g (1 - s)), d u = dy g s with s = sigmoid(g). expf, not __expf.
#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

__global__ void swiglu_forward_kernel(float* dst, const float* gate_up, Index M, Index I) {
  const Index total = M * I;
  ZL_GRID_STRIDE(i, total) {
    const Index row = i / I, j = i % I;
    const float g = gate_up[row * 2 * I + j], u = gate_up[row * 2 * I + I + j];
    dst[i] = g / (1.0f + expf(-g)) * u;
  }
}

__global__ void swiglu_backward_kernel(float* diff_gate_up, const float* diff_dst,
                                       const float* gate_up, Index M, Index I) {
  const Index total = M * I;
  ZL_GRID_STRIDE(i, total) {
    const Index row = i / I, j = i % I;
    const float g = gate_up[row * 2 * I + j], u = gate_up[row * 2 * I + I + j];
    const float dy = diff_dst[i];
    const float s = 1.0f / (1.0f + expf(-g));
    diff_gate_up[row * 2 * I + j] = dy * u * s * (1.0f + g * (1.0f - s));
    diff_gate_up[row * 2 * I + I + j] = dy * g * s;
  }
}

}  // namespace

void swiglu_forward(cudaStream_t s, float* dst, const float* gate_up, Index M, Index I) {
  if (M == 0) return;
  ZL_LAUNCH(swiglu_forward_kernel, grid_for(M * I, 256), 256, s)(dst, gate_up, M, I);
  check_launch("swiglu_forward", M, I);
}

void swiglu_backward(cudaStream_t s, float* diff_gate_up, const float* diff_dst,
                     const float* gate_up, Index M, Index I) {
  if (M == 0) return;
  ZL_LAUNCH(swiglu_backward_kernel, grid_for(M * I, 256), 256, s)
  (diff_gate_up, diff_dst, gate_up, M, I);
  check_launch("swiglu_backward", M, I);
}

}  // namespace zerolora::cuda
