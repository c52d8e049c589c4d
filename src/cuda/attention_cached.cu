// Generation's attention on the device (ops/attention.hpp, attention_cached): M new query rows
// at positions first.. against the KV cache, causal and within the sliding window where there is
// one, fp32, with the CPU's softmax (p = exp(s - max) / sum). A few rows a call (a token at a
// time, or a prompt), so one warp per query row and head: the task's q in the warp's shared
// memory, the cached rows it meets 32 at a time, one per lane, each lane computing that row's
// score whole, and the lanes then adding the 32 rows' values, each lane owning the head
// dimensions lane, lane + 32, ... (registers: no per-thread arrays in local memory). The rows are
// added in increasing order, as on the CPU.
#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

constexpr int kWarps = 4;  // per block
constexpr int kThreads = 32 * kWarps;
constexpr int kMaxHeadDim = 256;
constexpr int kPerLane = kMaxHeadDim / 32;

// Each warp's share of tasks [0, n) in a grid-stride loop; every lane of a warp has the same t.
#define ZL_WARP_STRIDE(t, n)                                                                \
  for (Index t = (blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x) / 32; t < (n); \
       t += static_cast<Index>(gridDim.x) * blockDim.x / 32)

__device__ __forceinline__ float dot(const float* a, const float* b, Index n) {
  float sum = 0.0f;
  for (Index d = 0; d < n; ++d) sum += a[d] * b[d];
  return sum;
}

// Per lane, the running max and sum of exp of the scores it saw: folded into the next score.
struct SoftmaxSum {
  float max = -INFINITY, sum = 0.0f;
  __device__ void add(float s) {
    if (s > max) {
      sum = sum * expf(max - s) + 1.0f;
      max = s;
    } else {
      sum += expf(s - max);
    }
  }
  // Over the warp's lanes: the row's max and 1 / sum of exp(s - max), the factors of p as the
  // CPU computes it (p = exp(s - max) / sum).
  struct Row {
    float max, inv_sum;
  };
  __device__ Row warp_row() const {
    const float m = warp_max(max);
    return {m, 1.0f / warp_sum(max == -INFINITY ? 0.0f : sum * expf(max - m))};
  }
};

// The rows of the chunk starting at row j0 of [.., end): 32, or what is left.
__device__ __forceinline__ Index chunk_rows(Index j0, Index end) {
  return end - j0 < 32 ? end - j0 : 32;
}

// acc[c] += sum over the chunk's rows k < n of weight[k] * rows[k * ld + d] for the lane's
// dimensions d = lane + 32 c.
__device__ __forceinline__ void accumulate(float (&acc)[kPerLane], const float* weight, Index n,
                                           const float* rows, Index ld, Index hd) {
  const int lane = threadIdx.x & 31;
  for (Index k = 0; k < n; ++k) {
    const float w = weight[k];
    ZL_UNROLL
    for (int c = 0; c < kPerLane; ++c) {
      const Index d = lane + 32 * c;
      if (d < hd) acc[c] += w * rows[k * ld + d];
    }
  }
}

// One query row's attention, by the whole warp: out (=) sum_j p_j v_j over the keys and values
// of rows [from, last], `stride` floats apart, with q (the warp's copy of q_row) and p_chunk
// the warp's shared memory.
__device__ void attend(float* out, float* q, float* p_chunk, const float* q_row, const float* keys,
                       const float* values, Index stride, Index from, Index last, Index hd,
                       float scale) {
  const int lane = threadIdx.x & 31;
  __syncwarp();  // the last task's reads of q and p_chunk are done
  for (Index d = lane; d < hd; d += 32) q[d] = q_row[d];
  __syncwarp();
  SoftmaxSum softmax;
  for (Index j = from + lane; j <= last; j += 32)
    softmax.add(scale * dot(q, keys + j * stride, hd));
  const SoftmaxSum::Row row = softmax.warp_row();
  float acc[kPerLane] = {};
  for (Index j0 = from; j0 <= last; j0 += 32) {
    const Index j = j0 + lane;
    p_chunk[lane] =
        j <= last ? expf(scale * dot(q, keys + j * stride, hd) - row.max) * row.inv_sum : 0.0f;
    __syncwarp();
    accumulate(acc, p_chunk, chunk_rows(j0, last + 1), values + j0 * stride, stride, hd);
    __syncwarp();  // p_chunk is rewritten next
  }
  ZL_UNROLL
  for (int c = 0; c < kPerLane; ++c)
    if (lane + 32 * c < hd) out[lane + 32 * c] = acc[c];
}

__global__ void cached_kernel(float* out, const float* q_rows, Index q_stride, const float* keys,
                              const float* values, Index first, Index M, Index heads,
                              Index kv_heads, Index hd, Index window, float scale) {
  __shared__ float q_shared[kWarps][kMaxHeadDim];
  __shared__ float p_shared[kWarps][32];
  const int warp = threadIdx.x >> 5;
  const Index kvd = kv_heads * hd;
  ZL_WARP_STRIDE(t, M * heads) {
    const Index i = t / heads, h = t % heads;
    const Index kvh = h / (heads / kv_heads);
    const Index last = first + i;
    attend(out + i * heads * hd + h * hd, q_shared[warp], p_shared[warp],
           q_rows + i * q_stride + h * hd, keys + kvh * hd, values + kvh * hd, kvd,
           first_key(last, 0, window), last, hd, scale);
  }
}

// Blocks for `tasks` warps' tasks.
unsigned warp_grid(Index tasks) {
  return grid_for(tasks * 32, kThreads);
}

}  // namespace

void attention_cached(cudaStream_t s, float* out, const float* q, Index q_stride, const float* keys,
                      const float* values, Index first, Index M, Index heads, Index kv_heads,
                      Index head_dim, Index window) {
  if (M == 0) return;
  ZL_LAUNCH(cached_kernel, warp_grid(M * heads), kThreads, s)
  (out, q, q_stride, keys, values, first, M, heads, kv_heads, head_dim, window,
   attention_scale(head_dim));
  check_launch("attention_cached", M, heads * head_dim);
}

}  // namespace zerolora::cuda
