// Token cross-entropy fused with its gradient on the device (ops/cross_entropy.hpp), one block
// per row: row_loss = logsumexp(z) - z[target]; z (=) (softmax(z) - onehot) * grad_scale when
// write_grad; rows whose target is -100 get loss 0 and a zero gradient. The host sums row_loss
// in row order (double), so the loss is the same whatever the launch shape.
#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

constexpr int kThreads = 512;
constexpr std::int32_t kIgnoreIndex = -100;

__global__ void cross_entropy_kernel(float* logits, const std::int32_t* targets, double* row_loss,
                                     Index R, Index V, float grad_scale, bool write_grad) {
  __shared__ float shared[32];
  for (Index r = blockIdx.x; r < R; r += gridDim.x) {
    float* z = logits + r * V;
    const std::int32_t target = targets[r];
    if (target == kIgnoreIndex) {
      if (write_grad)
        for (Index j = threadIdx.x; j < V; j += blockDim.x) z[j] = 0.0f;
      if (threadIdx.x == 0) row_loss[r] = 0.0;
      continue;
    }
    float m = -INFINITY;
    for (Index j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, z[j]);
    m = block_max(m, shared);
    float sum = 0.0f;
    for (Index j = threadIdx.x; j < V; j += blockDim.x) sum += expf(z[j] - m);
    sum = block_sum(sum, shared);
    const float lse = m + logf(sum);
    const float z_target = z[target];
    __syncthreads();  // every thread has read z[target] before it is overwritten
    if (threadIdx.x == 0) row_loss[r] = static_cast<double>(lse - z_target);
    if (write_grad) {
      for (Index j = threadIdx.x; j < V; j += blockDim.x) {
        const float g = expf(z[j] - lse) * grad_scale;
        z[j] = j == target ? g - grad_scale : g;
      }
    }
  }
}

}  // namespace

void cross_entropy(cudaStream_t s, float* logits, const std::int32_t* targets, double* row_loss,
                   Index R, Index V, float grad_scale, bool write_grad) {
  if (R == 0) return;
  ZL_LAUNCH(cross_entropy_kernel, grid_for(R, 1), kThreads, s)
  (logits, targets, row_loss, R, V, grad_scale, write_grad);
  check_launch("cross_entropy", R, V);
}

}  // namespace zerolora::cuda
