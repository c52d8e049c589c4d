// Token embedding lookup on the device (ops/embedding.hpp). Frozen table: no backward.
#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

template <class W>
__global__ void embedding_kernel(float* dst, const std::int32_t* tokens, const W* table, Index M,
                                 Index D) {
  for (Index row = blockIdx.x; row < M; row += gridDim.x) {
    const W* src = table + static_cast<Index>(tokens[row]) * D;
    for (Index j = threadIdx.x; j < D; j += blockDim.x) dst[row * D + j] = load_weight(src, j);
  }
}

template <class W>
void launch(cudaStream_t s, float* dst, const std::int32_t* tokens, const W* table, Index M,
            Index D) {
  if (M == 0) return;
  ZL_LAUNCH(embedding_kernel<W>, grid_for(M, 1), 128, s)(dst, tokens, table, M, D);
  check_launch("embedding_forward", M, D);
}

}  // namespace

void embedding_forward(cudaStream_t s, float* dst, const std::int32_t* tokens, const float* table,
                       Index M, Index D) {
  launch(s, dst, tokens, table, M, D);
}
void embedding_forward(cudaStream_t s, float* dst, const std::int32_t* tokens,
                       const Bf16Bits* table, Index M, Index D) {
  launch(s, dst, tokens, table, M, D);
}

}  // namespace zerolora::cuda
