// Causal grouped-query attention over segments on the device (ops/attention.hpp): the simple
// kernel of the backend, fp32 arithmetic, exact softmax per row (a pass for its max and sum, a
// second for the output), no atomics (deterministic). It is the reference the cuDNN fused
// attention is checked against and the path for what cuDNN refuses (fp32, head sizes it does
// not take). With round_operands (the bf16 policy) q, k, v, d(out), the probabilities and
// d(scores) are rounded to bf16 where the CPU rounds its matmul operands.
//   forward   s_j = scale q.k_j (j <= i, same segment, and i - j < window when there is one),
//             p_j = exp(s_j - max s) / sum exp(s - max s) (as the CPU), out = sum p_j v_j,
//             lse = log sum exp s
//   backward  delta = dO.O;  p = exp(s - lse);  dp = dO.v_j;  ds = p (dp - delta)
//             dQ = scale sum_j ds k_j;  dK_j = scale sum_i ds q_i;  dV_j = sum_i p dO_i
//
// One warp per task: a query row and head (forward, dQ, generation) or a key row and KV head
// (dK, dV). The task's own vectors (q, or k and v, and d(out)) sit in the warp's shared memory;
// the rows it meets go 32 at a time, one per lane, each lane computing that row's scores whole,
// and the lanes then add the 32 rows' contributions to the accumulators, each lane owning the
// head dimensions lane, lane + 32, ... (registers: no per-thread arrays in local memory, which
// CUDA would reserve for every thread the GPU can hold). The rows are added in increasing order,
// as on the CPU.
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

__device__ __forceinline__ float operand(float x, bool round) {
  return round ? round_bf16(x) : x;
}

// The first key row i sees: its segment's first, or the sliding window's (i - window, i].
__device__ __forceinline__ Index first_key(Index i, Index segment_begin, Index window) {
  return window > 0 && i - window + 1 > segment_begin ? i - window + 1 : segment_begin;
}

// a (already an operand) . b, b rounded when `round`.
__device__ __forceinline__ float dot(const float* a, const float* b, Index n, bool round) {
  float sum = 0.0f;
  for (Index d = 0; d < n; ++d) sum += a[d] * operand(b[d], round);
  return sum;
}

// The warp's copy of a head vector: mine[d] = operand(from[d]). Call with the whole warp.
__device__ __forceinline__ void stage(float* mine, const float* from, Index hd, bool round) {
  for (Index d = threadIdx.x & 31; d < hd; d += 32) mine[d] = operand(from[d], round);
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
  // CPU computes it (p = exp(s - max) / sum), and log sum exp.
  struct Row {
    float max, inv_sum, lse;
  };
  __device__ Row warp_row() const {
    const float m = warp_max(max);
    const float total = warp_sum(max == -INFINITY ? 0.0f : sum * expf(max - m));
    return {m, 1.0f / total, m + logf(total)};
  }
};

// The rows of the chunk starting at row j0 of [.., end): 32, or what is left.
__device__ __forceinline__ Index chunk_rows(Index j0, Index end) {
  return end - j0 < 32 ? end - j0 : 32;
}

// acc[c] += sum over the chunk's rows k < n of weight[k] * operand(rows[k * ld + d]) for the
// lane's dimensions d = lane + 32 c.
__device__ __forceinline__ void accumulate(float (&acc)[kPerLane], const float* weight, Index n,
                                           const float* rows, Index ld, Index hd, bool round) {
  const int lane = threadIdx.x & 31;
  for (Index k = 0; k < n; ++k) {
    const float w = weight[k];
    ZL_UNROLL
    for (int c = 0; c < kPerLane; ++c) {
      const Index d = lane + 32 * c;
      if (d < hd) acc[c] += w * operand(rows[k * ld + d], round);
    }
  }
}

__device__ __forceinline__ void store(float* to, const float (&acc)[kPerLane], float scale,
                                      Index hd) {
  const int lane = threadIdx.x & 31;
  ZL_UNROLL
  for (int c = 0; c < kPerLane; ++c)
    if (lane + 32 * c < hd) to[lane + 32 * c] = scale * acc[c];
}

// One query row's attention, by the whole warp: out (=) sum_j p_j v_j over the keys and values
// of rows [from, last], `stride` floats apart, with q (staged in the warp's `q` from q_row) and
// p_chunk the warp's shared memory; returns log sum exp of the scores.
__device__ float attend(float* out, float* q, float* p_chunk, const float* q_row, const float* keys,
                        const float* values, Index stride, Index from, Index last, Index hd,
                        float scale, bool round) {
  const int lane = threadIdx.x & 31;
  __syncwarp();  // the last task's reads of q and p_chunk are done
  stage(q, q_row, hd, round);
  __syncwarp();
  SoftmaxSum softmax;
  for (Index j = from + lane; j <= last; j += 32)
    softmax.add(scale * dot(q, keys + j * stride, hd, round));
  const SoftmaxSum::Row row = softmax.warp_row();
  float acc[kPerLane] = {};
  for (Index j0 = from; j0 <= last; j0 += 32) {
    const Index j = j0 + lane;
    p_chunk[lane] =
        j <= last
            ? operand(expf(scale * dot(q, keys + j * stride, hd, round) - row.max) * row.inv_sum,
                      round)
            : 0.0f;
    __syncwarp();
    accumulate(acc, p_chunk, chunk_rows(j0, last + 1), values + j0 * stride, stride, hd, round);
    __syncwarp();  // p_chunk is rewritten next
  }
  store(out, acc, 1.0f, hd);
  return row.lse;
}

__global__ void forward_kernel(float* out, float* lse, const float* qkv, AttentionGeometry g,
                               float scale, bool round) {
  __shared__ float q_shared[kWarps][kMaxHeadDim];
  __shared__ float p_shared[kWarps][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const Index hd = g.head_dim, ld = (g.heads + 2 * g.kv_heads) * hd;
  ZL_WARP_STRIDE(t, g.rows * g.heads) {
    const Index i = t / g.heads, h = t % g.heads;
    const Index kvh = h / (g.heads / g.kv_heads);
    const Index begin = first_key(i, g.segment_begin[g.row_segment[i]], g.window);
    const float row_lse =
        attend(out + i * g.heads * hd + h * hd, q_shared[warp], p_shared[warp],
               qkv + i * ld + h * hd, qkv + g.heads * hd + kvh * hd,
               qkv + (g.heads + g.kv_heads) * hd + kvh * hd, ld, begin, i, hd, scale, round);
    if (lane == 0) lse[h * g.rows + i] = row_lse;
  }
}

__global__ void delta_kernel(float* delta, const float* diff_out, const float* out,
                             AttentionGeometry g) {
  const Index hd = g.head_dim, total = g.rows * g.heads;
  ZL_GRID_STRIDE(t, total) {
    const Index i = t / g.heads, h = t % g.heads;
    const float* o = out + i * g.heads * hd + h * hd;
    const float* dout = diff_out + i * g.heads * hd + h * hd;
    float sum = 0.0f;
    for (Index d = 0; d < hd; ++d) sum += dout[d] * o[d];
    delta[h * g.rows + i] = sum;
  }
}

__global__ void diff_q_kernel(float* diff_qkv, const float* diff_out, const float* qkv,
                              const float* lse, const float* delta, AttentionGeometry g,
                              float scale, bool round) {
  __shared__ float q_shared[kWarps][kMaxHeadDim], dout_shared[kWarps][kMaxHeadDim];
  __shared__ float ds_shared[kWarps][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* q = q_shared[warp];
  float* dout = dout_shared[warp];
  float* ds_chunk = ds_shared[warp];
  const Index hd = g.head_dim, ld = (g.heads + 2 * g.kv_heads) * hd;
  ZL_WARP_STRIDE(t, g.rows * g.heads) {
    const Index i = t / g.heads, h = t % g.heads;
    const Index kvh = h / (g.heads / g.kv_heads);
    const Index begin = first_key(i, g.segment_begin[g.row_segment[i]], g.window);
    const float* keys = qkv + g.heads * hd + kvh * hd;
    const float* values = qkv + (g.heads + g.kv_heads) * hd + kvh * hd;
    const float row_lse = lse[h * g.rows + i], row_delta = delta[h * g.rows + i];
    __syncwarp();
    stage(q, qkv + i * ld + h * hd, hd, round);
    stage(dout, diff_out + i * g.heads * hd + h * hd, hd, round);
    __syncwarp();
    float dq[kPerLane] = {};
    for (Index j0 = begin; j0 <= i; j0 += 32) {
      const Index j = j0 + lane;
      float ds = 0.0f;
      if (j <= i) {
        const float p = expf(scale * dot(q, keys + j * ld, hd, round) - row_lse);
        ds = operand(p * (dot(dout, values + j * ld, hd, round) - row_delta), round);
      }
      ds_chunk[lane] = ds;
      __syncwarp();
      accumulate(dq, ds_chunk, chunk_rows(j0, i + 1), keys + j0 * ld, ld, hd, round);
      __syncwarp();
    }
    store(diff_qkv + i * ld + h * hd, dq, scale, hd);
  }
}

__global__ void diff_kv_kernel(float* diff_qkv, const float* diff_out, const float* qkv,
                               const float* lse, const float* delta, AttentionGeometry g,
                               float scale, bool round) {
  __shared__ float k_shared[kWarps][kMaxHeadDim], v_shared[kWarps][kMaxHeadDim];
  __shared__ float p_shared[kWarps][32], ds_shared[kWarps][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float* k = k_shared[warp];
  float* v = v_shared[warp];
  float* p_chunk = p_shared[warp];
  float* ds_chunk = ds_shared[warp];
  const Index hd = g.head_dim, ld = (g.heads + 2 * g.kv_heads) * hd, out_ld = g.heads * hd;
  const Index group = g.heads / g.kv_heads;
  ZL_WARP_STRIDE(t, g.rows * g.kv_heads) {
    const Index j = t / g.kv_heads, kvh = t % g.kv_heads;
    const std::int32_t segment = g.row_segment[j];
    // The query rows that see key row j: to its segment's end, within the window.
    Index end = g.segment_begin[segment] + g.segment_length[segment];
    if (g.window > 0 && j + g.window < end) end = j + g.window;
    __syncwarp();
    stage(k, qkv + j * ld + g.heads * hd + kvh * hd, hd, round);
    stage(v, qkv + j * ld + (g.heads + g.kv_heads) * hd + kvh * hd, hd, round);
    __syncwarp();
    float dk[kPerLane] = {}, dv[kPerLane] = {};
    for (Index h = kvh * group; h < (kvh + 1) * group; ++h) {
      for (Index i0 = j; i0 < end; i0 += 32) {
        const Index i = i0 + lane;
        float p = 0.0f, ds = 0.0f;
        if (i < end) {
          p = expf(scale * dot(k, qkv + i * ld + h * hd, hd, round) - lse[h * g.rows + i]);
          ds = operand(
              p * (dot(v, diff_out + i * out_ld + h * hd, hd, round) - delta[h * g.rows + i]),
              round);
        }
        p_chunk[lane] = operand(p, round);
        ds_chunk[lane] = ds;
        __syncwarp();
        const Index n = chunk_rows(i0, end);
        accumulate(dk, ds_chunk, n, qkv + i0 * ld + h * hd, ld, hd, round);
        accumulate(dv, p_chunk, n, diff_out + i0 * out_ld + h * hd, out_ld, hd, round);
        __syncwarp();
      }
    }
    store(diff_qkv + j * ld + g.heads * hd + kvh * hd, dk, scale, hd);
    store(diff_qkv + j * ld + (g.heads + g.kv_heads) * hd + kvh * hd, dv, 1.0f, hd);
  }
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
           first_key(last, 0, window), last, hd, scale, false);
  }
}

// Blocks for `tasks` warps' tasks.
unsigned warp_grid(Index tasks) {
  return grid_for(tasks * 32, kThreads);
}

float scale_of(Index head_dim) {
  return static_cast<float>(1.0 / sqrt(static_cast<double>(head_dim)));
}

}  // namespace

void attention_forward(cudaStream_t s, float* out, float* lse, const float* qkv,
                       const AttentionGeometry& g, bool round_operands) {
  if (g.rows == 0) return;
  ZL_LAUNCH(forward_kernel, warp_grid(g.rows * g.heads), kThreads, s)
  (out, lse, qkv, g, scale_of(g.head_dim), round_operands);
  check_launch("attention_forward", g.rows, g.heads * g.head_dim);
}

void attention_backward(cudaStream_t s, float* diff_qkv, const float* diff_out, const float* qkv,
                        const float* out, const float* lse, float* delta,
                        const AttentionGeometry& g, bool round_operands) {
  if (g.rows == 0) return;
  const float scale = scale_of(g.head_dim);
  ZL_LAUNCH(delta_kernel, grid_for(g.rows * g.heads, kThreads), kThreads, s)
  (delta, diff_out, out, g);
  ZL_LAUNCH(diff_q_kernel, warp_grid(g.rows * g.heads), kThreads, s)
  (diff_qkv, diff_out, qkv, lse, delta, g, scale, round_operands);
  ZL_LAUNCH(diff_kv_kernel, warp_grid(g.rows * g.kv_heads), kThreads, s)
  (diff_qkv, diff_out, qkv, lse, delta, g, scale, round_operands);
  check_launch("attention_backward", g.rows, g.heads * g.head_dim);
}

void attention_cached(cudaStream_t s, float* out, const float* q, Index q_stride, const float* keys,
                      const float* values, Index first, Index M, Index heads, Index kv_heads,
                      Index head_dim, Index window) {
  if (M == 0) return;
  ZL_LAUNCH(cached_kernel, warp_grid(M * heads), kThreads, s)
  (out, q, q_stride, keys, values, first, M, heads, kv_heads, head_dim, window, scale_of(head_dim));
  check_launch("attention_cached", M, heads * head_dim);
}

}  // namespace zerolora::cuda
