// LoRA dropout on the device (ops/lora_branch.hpp apply_dropout): the mask of device_math.cuh's
// DropoutDraw, the CPU's exactly. The fused LoRA kernels (lora.cu) draw it on the fly; this
// copy serves ranks above them.
#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

__global__ void dropout_kernel(float* dst, Index dst_rs, Index dst_cs, const float* src,
                               Index src_rs, Index src_cs, Index rows, Index cols, DropoutDraw mask,
                               bool accumulate) {
  ZL_ROWS_COLS(r, j, rows, cols) {
    const float value = mask.apply(mask.row(r), j, src[r * src_rs + j * src_cs]);
    float& y = dst[r * dst_rs + j * dst_cs];
    y = accumulate ? y + value : value;
  }
}

}  // namespace

void apply_dropout(cudaStream_t s, float* dst, Index dst_rs, Index dst_cs, const float* src,
                   Index src_rs, Index src_cs, Index rows, Index cols, double p, std::uint64_t key,
                   const std::uint64_t* row_keys, bool accumulate) {
  if (rows * cols == 0) return;
  ZL_LAUNCH(dropout_kernel, grid_rows_cols(rows, cols, 256), 256, s)
  (dst, dst_rs, dst_cs, src, src_rs, src_cs, rows, cols, make_dropout_draw(p, key, row_keys),
   accumulate);
  check_launch("apply_dropout", rows, cols);
}

}  // namespace zerolora::cuda
