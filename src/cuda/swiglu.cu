// SwiGLU on the device (ops/swiglu.hpp): dst = silu(g) * u over gate_up [M, 2I] (gate first);
// backward d g = dy u s (1 + g (1 - s)), d u = dy g s with s = sigmoid(g). expf, not __expf.
// The fp32 output null: only its bf16 rounding is written (kernels.hpp).
#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

__global__ void swiglu_forward_kernel(float* dst, const float* gate_up, Index M, Index I,
                                      Bf16Bits* rounded) {
  ZL_ROWS_COLS(row, j, M, I) {
    const float g = gate_up[row * 2 * I + j], u = gate_up[row * 2 * I + I + j];
    const float y = g / (1.0f + expf(-g)) * u;
    if (dst) dst[row * I + j] = y;
    if (rounded) rounded[row * I + j] = float_to_bf16(y);
  }
}

__global__ void swiglu_backward_kernel(float* diff_gate_up, const float* diff_dst,
                                       const float* gate_up, Index M, Index I, Bf16Bits* rounded) {
  ZL_ROWS_COLS(row, j, M, I) {
    const float g = gate_up[row * 2 * I + j], u = gate_up[row * 2 * I + I + j];
    const float dy = diff_dst[row * I + j];
    const float s = 1.0f / (1.0f + expf(-g));
    const float dg = dy * u * s * (1.0f + g * (1.0f - s)), du = dy * g * s;
    if (diff_gate_up) {
      diff_gate_up[row * 2 * I + j] = dg;
      diff_gate_up[row * 2 * I + I + j] = du;
    }
    if (rounded) {
      rounded[row * 2 * I + j] = float_to_bf16(dg);
      rounded[row * 2 * I + I + j] = float_to_bf16(du);
    }
  }
}

}  // namespace

void swiglu_forward(cudaStream_t s, float* dst, const float* gate_up, Index M, Index I,
                    Bf16Bits* rounded) {
  if (M == 0) return;
  if (!dst && !rounded) refuse_launch("swiglu_forward", "neither values nor their rounding wanted");
  ZL_LAUNCH(swiglu_forward_kernel, grid_rows_cols(M, I, 256), 256, s)(dst, gate_up, M, I, rounded);
  check_launch("swiglu_forward", M, I);
}

void swiglu_backward(cudaStream_t s, float* diff_gate_up, const float* diff_dst,
                     const float* gate_up, Index M, Index I, Bf16Bits* rounded) {
  if (M == 0) return;
  if (!diff_gate_up && !rounded)
    refuse_launch("swiglu_backward", "neither values nor their rounding wanted");
  ZL_LAUNCH(swiglu_backward_kernel, grid_rows_cols(M, I, 256), 256, s)
  (diff_gate_up, diff_dst, gate_up, M, I, rounded);
  check_launch("swiglu_backward", M, I);
}

}  // namespace zerolora::cuda
