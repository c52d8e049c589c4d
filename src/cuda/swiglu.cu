// SwiGLU on the device (ops/swiglu.hpp): dst = silu(g) * u over gate_up [M, 2I] (gate first);
// backward d g = dy u s (1 + g (1 - s)), d u = dy g s with s = sigmoid(g). expf, not __expf.
// The fp32 output null: only its bf16 rounding is written (kernels.hpp).
// Each thread takes L consecutive columns of a row (4 with 16-byte loads where I is a multiple
// of 4 and every pointer is aligned for it, else 1): one column per thread left these kernels at
// half the bandwidth of a copy on an H100 (bench_kernels, 2026-12-06), its blocks too small
// and its loads too narrow to keep HBM busy. The values are the same whatever L: each column's
// arithmetic is the same expression (swiglu_value, swiglu_gradients).
#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

__device__ __forceinline__ float swiglu_value(float g, float u) {
  return g / (1.0f + expf(-g)) * u;
}
__device__ __forceinline__ void swiglu_gradients(float g, float u, float dy, float& dg, float& du) {
  const float s = 1.0f / (1.0f + expf(-g));
  dg = dy * u * s * (1.0f + g * (1.0f - s));
  du = dy * g * s;
}

template <int L>
__global__ void swiglu_forward_kernel(float* dst, const float* gate_up, Index M, Index I,
                                      Bf16Bits* rounded) {
  ZL_ROWS_COLS(row, c, M, I / L) {
    const float* gate = gate_up + row * 2 * I;
    const auto g = group<const FloatLanes<L>>(gate, c), u = group<const FloatLanes<L>>(gate + I, c);
    FloatLanes<L> y;
    Bf16Lanes<L> y16;
    ZL_UNROLL for (int l = 0; l < L; ++l) {
      y.v[l] = swiglu_value(g.v[l], u.v[l]);
      y16.v[l] = float_to_bf16(y.v[l]);
    }
    if (dst) group<FloatLanes<L>>(dst + row * I, c) = y;
    if (rounded) group<Bf16Lanes<L>>(rounded + row * I, c) = y16;
  }
}

template <int L>
__global__ void swiglu_backward_kernel(float* diff_gate_up, const float* diff_dst,
                                       const float* gate_up, Index M, Index I, Bf16Bits* rounded) {
  ZL_ROWS_COLS(row, c, M, I / L) {
    const float* gate = gate_up + row * 2 * I;
    const auto g = group<const FloatLanes<L>>(gate, c), u = group<const FloatLanes<L>>(gate + I, c);
    const auto dy = group<const FloatLanes<L>>(diff_dst + row * I, c);
    FloatLanes<L> dg, du;
    Bf16Lanes<L> dg16, du16;
    ZL_UNROLL for (int l = 0; l < L; ++l) {
      swiglu_gradients(g.v[l], u.v[l], dy.v[l], dg.v[l], du.v[l]);
      dg16.v[l] = float_to_bf16(dg.v[l]);
      du16.v[l] = float_to_bf16(du.v[l]);
    }
    if (diff_gate_up) {
      group<FloatLanes<L>>(diff_gate_up + row * 2 * I, c) = dg;
      group<FloatLanes<L>>(diff_gate_up + row * 2 * I + I, c) = du;
    }
    if (rounded) {
      group<Bf16Lanes<L>>(rounded + row * 2 * I, c) = dg16;
      group<Bf16Lanes<L>>(rounded + row * 2 * I + I, c) = du16;
    }
  }
}

}  // namespace

void swiglu_forward(cudaStream_t s, float* dst, const float* gate_up, Index M, Index I,
                    Bf16Bits* rounded) {
  if (M == 0) return;
  if (!dst && !rounded) refuse_launch("swiglu_forward", "neither values nor their rounding wanted");
  if (quads_aligned(I, {dst, gate_up}, {rounded})) {
    ZL_LAUNCH(swiglu_forward_kernel<4>, grid_rows_cols(M, I / 4, 256), 256, s)
    (dst, gate_up, M, I, rounded);
  } else {
    ZL_LAUNCH(swiglu_forward_kernel<1>, grid_rows_cols(M, I, 256), 256, s)
    (dst, gate_up, M, I, rounded);
  }
  check_launch("swiglu_forward", M, I);
}

void swiglu_backward(cudaStream_t s, float* diff_gate_up, const float* diff_dst,
                     const float* gate_up, Index M, Index I, Bf16Bits* rounded) {
  if (M == 0) return;
  if (!diff_gate_up && !rounded)
    refuse_launch("swiglu_backward", "neither values nor their rounding wanted");
  if (quads_aligned(I, {diff_gate_up, diff_dst, gate_up}, {rounded})) {
    ZL_LAUNCH(swiglu_backward_kernel<4>, grid_rows_cols(M, I / 4, 256), 256, s)
    (diff_gate_up, diff_dst, gate_up, M, I, rounded);
  } else {
    ZL_LAUNCH(swiglu_backward_kernel<1>, grid_rows_cols(M, I, 256), 256, s)
    (diff_gate_up, diff_dst, gate_up, M, I, rounded);
  }
  check_launch("swiglu_backward", M, I);
}

}  // namespace zerolora::cuda
