// LoRA dropout on the device (ops/lora_branch.hpp apply_dropout): element (i, j) is kept iff
// (mix64(hash_combine(key, row_keys[i]) + j) >> 40) >= p * 2^24, kept values scaled by
// 1 / (1 - p). The hash is core/rng.hpp's, so the GPU draws the CPU's masks exactly.
#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

__global__ void dropout_kernel(float* dst, Index dst_rs, Index dst_cs, const float* src,
                               Index src_rs, Index src_cs, Index rows, Index cols, float keep_scale,
                               std::uint64_t threshold, std::uint64_t key,
                               const std::uint64_t* row_keys, bool accumulate) {
  const Index total = rows * cols;
  ZL_GRID_STRIDE(i, total) {
    const Index r = i / cols, j = i % cols;
    const std::uint64_t row_key = hash_combine(key, row_keys[r]);
    const bool keep = (mix64(row_key + static_cast<std::uint64_t>(j)) >> 40) >= threshold;
    const float value = keep ? src[r * src_rs + j * src_cs] * keep_scale : 0.0f;
    float& y = dst[r * dst_rs + j * dst_cs];
    y = accumulate ? y + value : value;
  }
}

}  // namespace

void apply_dropout(cudaStream_t s, float* dst, Index dst_rs, Index dst_cs, const float* src,
                   Index src_rs, Index src_cs, Index rows, Index cols, double p, std::uint64_t key,
                   const std::uint64_t* row_keys, bool accumulate) {
  if (rows * cols == 0) return;
  const auto keep_scale = static_cast<float>(1.0 / (1.0 - p));
  const auto threshold = static_cast<std::uint64_t>(p * 16777216.0);
  ZL_LAUNCH(dropout_kernel, grid_for(rows * cols, 256), 256, s)
  (dst, dst_rs, dst_cs, src, src_rs, src_cs, rows, cols, keep_scale, threshold, key, row_keys,
   accumulate);
  check_launch("apply_dropout", rows, cols);
}

}  // namespace zerolora::cuda
