// Causal grouped-query attention over segments on the device (ops/attention.hpp): the simple
// kernel of the backend, one thread per query row and head (forward, dQ) or per key row and KV
// head (dK, dV), fp32 arithmetic, exact two-pass softmax per row like the CPU's tiled kernel,
// no atomics (deterministic). It is the reference the cuDNN fused attention is checked against
// and the path for what cuDNN refuses (fp32, head sizes it does not take). With round_operands
// (the bf16 policy) q, k, v, d(out), the probabilities and d(scores) are rounded to bf16 where
// the CPU rounds its matmul operands.
//   forward   s_j = scale q.k_j (j <= i, same segment, and i - j < window when there is one),
//             lse = log sum exp s, out = sum p_j v_j
//   backward  delta = dO.O;  p = exp(s - lse);  dp = dO.v_j;  ds = p (dp - delta)
//             dQ = scale sum_j ds k_j;  dK_j = scale sum_i ds q_i;  dV_j = sum_i p dO_i
#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kMaxHeadDim = 256;

__device__ __forceinline__ float operand(float x, bool round) {
  return round ? round_bf16(x) : x;
}

// The first key row i sees: its segment's first, or the sliding window's (i - window, i].
__device__ __forceinline__ Index first_key(Index i, Index segment_begin, Index window) {
  return window > 0 && i - window + 1 > segment_begin ? i - window + 1 : segment_begin;
}

__device__ __forceinline__ float dot(const float* a, const float* b, Index n, bool round) {
  float sum = 0.0f;
  for (Index d = 0; d < n; ++d) sum += a[d] * operand(b[d], round);
  return sum;
}

__global__ void forward_kernel(float* out, float* lse, const float* qkv, AttentionGeometry g,
                               float scale, bool round) {
  const Index hd = g.head_dim, ld = (g.heads + 2 * g.kv_heads) * hd;
  const Index total = g.rows * g.heads;
  ZL_GRID_STRIDE(t, total) {
    const Index i = t / g.heads, h = t % g.heads;
    const Index kvh = h / (g.heads / g.kv_heads);
    const Index begin = first_key(i, g.segment_begin[g.row_segment[i]], g.window);
    float q[kMaxHeadDim], acc[kMaxHeadDim];
    for (Index d = 0; d < hd; ++d) {
      q[d] = operand(qkv[i * ld + h * hd + d], round);
      acc[d] = 0.0f;
    }
    const float* keys = qkv + g.heads * hd + kvh * hd;
    const float* values = qkv + (g.heads + g.kv_heads) * hd + kvh * hd;
    float m = -INFINITY;
    for (Index j = begin; j <= i; ++j) m = fmaxf(m, scale * dot(q, keys + j * ld, hd, round));
    float sum = 0.0f;
    for (Index j = begin; j <= i; ++j) sum += expf(scale * dot(q, keys + j * ld, hd, round) - m);
    const float row_lse = m + logf(sum);
    for (Index j = begin; j <= i; ++j) {
      const float p = operand(expf(scale * dot(q, keys + j * ld, hd, round) - row_lse), round);
      for (Index d = 0; d < hd; ++d) acc[d] += p * operand(values[j * ld + d], round);
    }
    for (Index d = 0; d < hd; ++d) out[i * g.heads * hd + h * hd + d] = acc[d];
    lse[h * g.rows + i] = row_lse;
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
  const Index hd = g.head_dim, ld = (g.heads + 2 * g.kv_heads) * hd;
  const Index total = g.rows * g.heads;
  ZL_GRID_STRIDE(t, total) {
    const Index i = t / g.heads, h = t % g.heads;
    const Index kvh = h / (g.heads / g.kv_heads);
    const Index begin = first_key(i, g.segment_begin[g.row_segment[i]], g.window);
    float q[kMaxHeadDim], dout[kMaxHeadDim], dq[kMaxHeadDim];
    for (Index d = 0; d < hd; ++d) {
      q[d] = operand(qkv[i * ld + h * hd + d], round);
      dout[d] = operand(diff_out[i * g.heads * hd + h * hd + d], round);
      dq[d] = 0.0f;
    }
    const float* keys = qkv + g.heads * hd + kvh * hd;
    const float* values = qkv + (g.heads + g.kv_heads) * hd + kvh * hd;
    const float row_lse = lse[h * g.rows + i], row_delta = delta[h * g.rows + i];
    for (Index j = begin; j <= i; ++j) {
      const float p = expf(scale * dot(q, keys + j * ld, hd, round) - row_lse);
      const float ds = operand(p * (dot(dout, values + j * ld, hd, round) - row_delta), round);
      for (Index d = 0; d < hd; ++d) dq[d] += ds * operand(keys[j * ld + d], round);
    }
    for (Index d = 0; d < hd; ++d) diff_qkv[i * ld + h * hd + d] = scale * dq[d];
  }
}

__global__ void diff_kv_kernel(float* diff_qkv, const float* diff_out, const float* qkv,
                               const float* lse, const float* delta, AttentionGeometry g,
                               float scale, bool round) {
  const Index hd = g.head_dim, ld = (g.heads + 2 * g.kv_heads) * hd;
  const Index group = g.heads / g.kv_heads;
  const Index total = g.rows * g.kv_heads;
  ZL_GRID_STRIDE(t, total) {
    const Index j = t / g.kv_heads, kvh = t % g.kv_heads;
    const std::int32_t segment = g.row_segment[j];
    // The query rows that see key row j: to its segment's end, within the window.
    Index end = g.segment_begin[segment] + g.segment_length[segment];
    if (g.window > 0 && j + g.window < end) end = j + g.window;
    float k[kMaxHeadDim], v[kMaxHeadDim], dk[kMaxHeadDim], dv[kMaxHeadDim];
    for (Index d = 0; d < hd; ++d) {
      k[d] = operand(qkv[j * ld + g.heads * hd + kvh * hd + d], round);
      v[d] = operand(qkv[j * ld + (g.heads + g.kv_heads) * hd + kvh * hd + d], round);
      dk[d] = dv[d] = 0.0f;
    }
    for (Index h = kvh * group; h < (kvh + 1) * group; ++h) {
      for (Index i = j; i < end; ++i) {
        const float* q = qkv + i * ld + h * hd;
        const float* dout = diff_out + i * g.heads * hd + h * hd;
        const float p = expf(scale * dot(k, q, hd, round) - lse[h * g.rows + i]);
        const float ds = operand(p * (dot(v, dout, hd, round) - delta[h * g.rows + i]), round);
        const float pr = operand(p, round);
        for (Index d = 0; d < hd; ++d) {
          dk[d] += ds * operand(q[d], round);
          dv[d] += pr * operand(dout[d], round);
        }
      }
    }
    for (Index d = 0; d < hd; ++d) {
      diff_qkv[j * ld + g.heads * hd + kvh * hd + d] = scale * dk[d];
      diff_qkv[j * ld + (g.heads + g.kv_heads) * hd + kvh * hd + d] = dv[d];
    }
  }
}

__global__ void cached_kernel(float* out, const float* q_rows, Index q_stride, const float* keys,
                              const float* values, Index first, Index M, Index heads,
                              Index kv_heads, Index hd, Index window, float scale) {
  const Index total = M * heads, kvd = kv_heads * hd;
  ZL_GRID_STRIDE(t, total) {
    const Index i = t / heads, h = t % heads;
    const Index kvh = h / (heads / kv_heads);
    const float* q = q_rows + i * q_stride + h * hd;
    const Index last = first + i, from = first_key(last, 0, window);
    float m = -INFINITY;
    for (Index j = from; j <= last; ++j)
      m = fmaxf(m, scale * dot(q, keys + j * kvd + kvh * hd, hd, false));
    float sum = 0.0f;
    for (Index j = from; j <= last; ++j)
      sum += expf(scale * dot(q, keys + j * kvd + kvh * hd, hd, false) - m);
    float acc[kMaxHeadDim];
    for (Index d = 0; d < hd; ++d) acc[d] = 0.0f;
    for (Index j = from; j <= last; ++j) {
      const float p = expf(scale * dot(q, keys + j * kvd + kvh * hd, hd, false) - m) / sum;
      for (Index d = 0; d < hd; ++d) acc[d] += p * values[j * kvd + kvh * hd + d];
    }
    for (Index d = 0; d < hd; ++d) out[i * heads * hd + h * hd + d] = acc[d];
  }
}

float scale_of(Index head_dim) {
  return static_cast<float>(1.0 / sqrt(static_cast<double>(head_dim)));
}

}  // namespace

void attention_forward(cudaStream_t s, float* out, float* lse, const float* qkv,
                       const AttentionGeometry& g, bool round_operands) {
  if (g.rows == 0) return;
  ZL_LAUNCH(forward_kernel, grid_for(g.rows * g.heads, kThreads), kThreads, s)
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
  ZL_LAUNCH(diff_q_kernel, grid_for(g.rows * g.heads, kThreads), kThreads, s)
  (diff_qkv, diff_out, qkv, lse, delta, g, scale, round_operands);
  ZL_LAUNCH(diff_kv_kernel, grid_for(g.rows * g.kv_heads, kThreads), kThreads, s)
  (diff_qkv, diff_out, qkv, lse, delta, g, scale, round_operands);
  check_launch("attention_backward", g.rows, g.heads * g.head_dim);
}

void attention_cached(cudaStream_t s, float* out, const float* q, Index q_stride, const float* keys,
                      const float* values, Index first, Index M, Index heads, Index kv_heads,
                      Index head_dim, Index window) {
  if (M == 0) return;
  ZL_LAUNCH(cached_kernel, grid_for(M * heads, kThreads), kThreads, s)
  (out, q, q_stride, keys, values, first, M, heads, kv_heads, head_dim, window, scale_of(head_dim));
  check_launch("attention_cached", M, heads * head_dim);
}

}  // namespace zerolora::cuda
