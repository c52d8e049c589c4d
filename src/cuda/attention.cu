// Causal grouped-query attention over segments on the device (ops/attention.hpp): the backend's
// own kernels, fp32 arithmetic, exact softmax per row (a pass for its max and sum, a second for
// the output), no atomics (deterministic). They serve what cuDNN refuses (fp32, head sizes it
// does not take, a build without cuDNN) and are the reference cuDNN's fused attention is checked
// against. With round_operands (the bf16 policy) q, k, v, d(out), the probabilities and
// d(scores) are rounded to bf16 where the CPU rounds its matmul operands.
//   forward   s_j = scale q.k_j (j <= i, same segment, and i - j < window when there is one),
//             p_j = exp(s_j - max s) / sum exp(s - max s) (as the CPU), out = sum p_j v_j,
//             lse = log sum exp s
//   backward  delta = dO.O;  p = exp(s - lse);  dp = dO.v_j;  ds = p (dp - delta)
//             dQ = scale sum_j ds k_j;  dK_j = scale sum_i ds q_i;  dV_j = sum_i p dO_i
//
// Training's passes are tiled in shared memory, as FlashAttention's are, on the CUDA cores: a
// block takes a tile of query rows of one head (forward, dQ) or of key rows of one KV head (dK,
// dV) and meets the other side's rows a tile at a time, so that each row is read from global
// memory once per tile of the other side rather than once per row (a warp per row read every
// key and value row again for each query row and head: the 7B step did not finish in a minute
// on an H200). A thread computes each of its scores whole (the dot product over the head in
// increasing dimension); the products with V, K and Q are added row by row in increasing order,
// as on the CPU, each thread owning some head dimensions of one row, and only over the rows the
// mask lets through. Tiles are sized per head-size bucket (64, 128, 256) to fit CUDA's 48 KB of
// static shared memory; their rows are padded by one float so that the threads of a warp
// reading a column of different rows meet different banks.
// Generation's attention against the KV cache is attention_cached.cu's.
#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

constexpr int kThreads = 128;  // per block

__device__ __forceinline__ float operand(float x, bool round) {
  return round ? round_bf16(x) : x;
}

// ---- training's passes, tiled ----------------------------------------------------------------

// A tile shape: head sizes up to HeadDim, QueryRows query rows and KeyRows key rows a tile.
template <int HeadDim, int QueryRows, int KeyRows>
struct Tile {
  static constexpr int kHd = HeadDim, kQ = QueryRows, kK = KeyRows;
  static_assert(kThreads % kQ == 0 && kThreads % kK == 0 && 32 % kK == 0 &&
                HeadDim % (kThreads / kQ) == 0 && HeadDim % (kThreads / kK) == 0);
};

// Rows [first, first + ROWS) of a matrix `ld` floats a row, its columns [0, hd), into `tile`
// (HD + 1 floats a row), rounded where `round`; rows from `end` on and columns past hd are zeros
// (a zero adds nothing to a dot product). By the whole block, consecutive threads reading
// consecutive columns.
template <int ROWS, int HD>
__device__ __forceinline__ void load_tile(float (*tile)[HD + 1], const float* from, Index ld,
                                          Index first, Index end, Index hd, bool round) {
  for (int e = threadIdx.x; e < ROWS * HD; e += kThreads) {
    const int r = e / HD, d = e % HD;
    const Index row = first + r;
    tile[r][d] = row < end && d < hd ? operand(from[row * ld + d], round) : 0.0f;
  }
}

// dot[k] = a[first + step k] . b for N rows of a tile, each over the (zero-padded) head in
// increasing dimension: each of b's values read once for all N (a thread's scores share their
// key row), so that shared memory serves about one value per multiply-add rather than two.
template <int HD, int N>
__device__ __forceinline__ void dot_rows(float (&dot)[N], const float (*a)[HD + 1], int first,
                                         int step, const float* b) {
  ZL_UNROLL
  for (int k = 0; k < N; ++k) dot[k] = 0.0f;
  for (int d = 0; d < HD; ++d) {
    const float bd = b[d];
    ZL_UNROLL
    for (int k = 0; k < N; ++k) dot[k] += a[first + step * k][d] * bd;
  }
}

// Over the `lanes` consecutive lanes holding one row's scores (a power of two up to 32; every
// lane of the warp takes part).
template <int lanes>
__device__ __forceinline__ float lanes_max(float v) {
  for (int o = lanes / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
template <int lanes>
__device__ __forceinline__ float lanes_sum(float v) {
  for (int o = lanes / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The first row of the block's tile of query rows, the last tile first: under the causal mask a
// tile's work grows with its rows, so the heaviest start first and the lightest fill the tail.
__device__ __forceinline__ Index last_first(int rows_per_tile) {
  return static_cast<Index>(gridDim.x - 1 - blockIdx.x) * rows_per_tile;
}

__device__ __forceinline__ Index first_key_of(const AttentionGeometry& g, Index i) {
  return first_key(i, g.segment_begin[g.row_segment[i]], g.window);
}

// One past the last query row that sees key row j: its segment's end, or the window's.
__device__ __forceinline__ Index query_end_of(const AttentionGeometry& g, Index j) {
  const std::int32_t segment = g.row_segment[j];
  const Index end = g.segment_begin[segment] + g.segment_length[segment];
  return g.window > 0 && j + g.window < end ? j + g.window : end;
}

// The block's tile of query rows [i0, end) of head h (forward, dQ), its KV head's keys and
// values, and the fused q/k/v rows' width.
struct QueryTile {
  Index i0, end, h, ld;
  const float* keys;
  const float* values;
};
__device__ __forceinline__ QueryTile query_tile(const AttentionGeometry& g, const float* qkv,
                                                int rows) {
  const Index i0 = last_first(rows), h = blockIdx.y, kvh = h / (g.heads / g.kv_heads);
  const Index hd = g.head_dim;
  return {i0,
          i0 + rows < g.rows ? i0 + rows : g.rows,
          h,
          (g.heads + 2 * g.kv_heads) * hd,
          qkv + (g.heads + kvh) * hd,
          qkv + (g.heads + g.kv_heads + kvh) * hd};
}

// What the backward's kernels read of the query rows [i0, end) of head h: each row's first key,
// log-sum-exp and delta, and its q and d(out) as operands. By the whole block, read after a
// barrier.
template <int BQ, int HD>
__device__ __forceinline__ void load_query_rows(Index* first_of, float* lse_of, float* delta_of,
                                                float (*q_tile)[HD + 1], float (*dout_tile)[HD + 1],
                                                const AttentionGeometry& g, const float* qkv,
                                                const float* diff_out, const float* lse,
                                                const float* delta, Index h, Index i0, Index end,
                                                bool round) {
  const Index M = g.rows, hd = g.head_dim;
  for (int r = threadIdx.x; r < BQ; r += kThreads) {
    const bool row = i0 + r < end;
    first_of[r] = row ? first_key_of(g, i0 + r) : 0;
    lse_of[r] = row ? lse[h * M + i0 + r] : 0.0f;
    delta_of[r] = row ? delta[h * M + i0 + r] : 0.0f;
  }
  load_tile<BQ, HD>(q_tile, qkv + h * hd, (g.heads + 2 * g.kv_heads) * hd, i0, end, hd, round);
  load_tile<BQ, HD>(dout_tile, diff_out + h * hd, g.heads * hd, i0, end, hd, round);
}

// acc[k] += weights[c] tile[c][own + step k] over the columns [from, to) of the key tile at j0
// that query row i (first key `first`) sees, in increasing column: a thread's share of the
// product of a row of probabilities or d(scores) with the tile's values or keys.
template <int HD, int N>
__device__ __forceinline__ void add_row_products(float (&acc)[N], const float* weights,
                                                 const float (*tile)[HD + 1], Index first, Index i,
                                                 Index j0, int columns, int own, int step) {
  const int from = static_cast<int>(first > j0 ? first - j0 : 0);
  const int to = static_cast<int>(i - j0 + 1 < columns ? i - j0 + 1 : columns);
  for (int c = from; c < to; ++c) {
    const float w = weights[c];
    ZL_UNROLL
    for (int k = 0; k < N; ++k) acc[k] += w * tile[c][own + step * k];
  }
}

// scale acc[k] into row[own + step k], the dimensions under hd.
template <int N>
__device__ __forceinline__ void store_row(float* row, const float (&acc)[N], float scale, int own,
                                          int step, Index hd) {
  ZL_UNROLL
  for (int k = 0; k < N; ++k) {
    const Index d = own + step * k;
    if (d < hd) row[d] = scale * acc[k];
  }
}

// A block per tile of T::kQ query rows and one head. The score (r, c) of a key tile is thread
// e % kThreads's for e = r * kK + c: the kK lanes of a row are consecutive, each thread
// keeping the same column c of kEntries rows. The output row r is kRowThreads consecutive
// threads', each owning the dimensions kRowThreads apart from its own.
template <class T>
__global__ void forward_kernel(float* out, float* lse, const float* qkv, AttentionGeometry g,
                               float scale, bool round) {
  constexpr int HD = T::kHd, BQ = T::kQ, BK = T::kK;
  constexpr int kEntries = BQ * BK / kThreads, kRowThreads = kThreads / BQ;
  constexpr int kDims = HD / kRowThreads;
  static_assert(BQ * BK % kThreads == 0);
  __shared__ float q_tile[BQ][HD + 1];
  __shared__ float kv_tile[BK][HD + 1];  // the keys, then the values
  __shared__ float p_tile[BQ][BK + 1];
  __shared__ Index first_of[BQ];  // each query row's first key
  __shared__ float max_of[BQ], inv_sum_of[BQ];
  const QueryTile tile = query_tile(g, qkv, BQ);
  const Index M = g.rows, hd = g.head_dim, ld = tile.ld, i0 = tile.i0, i_end = tile.end, h = tile.h;
  for (int r = threadIdx.x; r < BQ; r += kThreads)
    first_of[r] = i0 + r < i_end ? first_key_of(g, i0 + r) : 0;
  load_tile<BQ, HD>(q_tile, qkv + h * hd, ld, i0, i_end, hd, round);
  __syncthreads();
  const Index j_begin = first_of[0];  // a later row's first key is never earlier
  const int c = threadIdx.x % BK, first_row = threadIdx.x / BK, row_step = kThreads / BK;
  auto row = [&](int k) { return first_row + row_step * k; };
  auto sees = [&](int r, Index j) { return i0 + r < i_end && j >= first_of[r] && j <= i0 + r; };
  float dot[kEntries];

  // Pass 1: each row's max score and sum of exp(score - max), per thread, then over its lanes.
  float running_max[kEntries], running_sum[kEntries];
  ZL_UNROLL
  for (int k = 0; k < kEntries; ++k) running_max[k] = -INFINITY, running_sum[k] = 0.0f;
  for (Index j0 = j_begin; j0 < i_end; j0 += BK) {
    __syncthreads();  // the last tile's reads are done
    load_tile<BK, HD>(kv_tile, tile.keys, ld, j0, i_end, hd, round);
    __syncthreads();
    dot_rows<HD>(dot, q_tile, first_row, row_step, kv_tile[c]);
    ZL_UNROLL
    for (int k = 0; k < kEntries; ++k) {
      if (!sees(row(k), j0 + c)) continue;
      const float s = scale * dot[k];
      if (s > running_max[k]) {
        running_sum[k] = running_sum[k] * expf(running_max[k] - s) + 1.0f;
        running_max[k] = s;
      } else {
        running_sum[k] += expf(s - running_max[k]);
      }
    }
  }
  ZL_UNROLL
  for (int k = 0; k < kEntries; ++k) {
    const float row_max = lanes_max<BK>(running_max[k]);
    const float total = lanes_sum<BK>(
        running_max[k] == -INFINITY ? 0.0f : running_sum[k] * expf(running_max[k] - row_max));
    const int r = row(k);
    if (c == 0 && i0 + r < i_end) {
      max_of[r] = row_max;
      inv_sum_of[r] = 1.0f / total;
      lse[h * M + i0 + r] = row_max + logf(total);
    }
  }

  // Pass 2: the probabilities a key tile at a time, then their products with its values.
  const int orow = threadIdx.x / kRowThreads, opos = threadIdx.x % kRowThreads;
  const Index oi = i0 + orow;
  float acc[kDims] = {};
  for (Index j0 = j_begin; j0 < i_end; j0 += BK) {
    __syncthreads();  // the last tile's values are read, and the row statistics written
    load_tile<BK, HD>(kv_tile, tile.keys, ld, j0, i_end, hd, round);
    __syncthreads();
    dot_rows<HD>(dot, q_tile, first_row, row_step, kv_tile[c]);
    ZL_UNROLL
    for (int k = 0; k < kEntries; ++k) {
      const int r = row(k);
      p_tile[r][c] =
          sees(r, j0 + c) ? operand(expf(scale * dot[k] - max_of[r]) * inv_sum_of[r], round) : 0.0f;
    }
    __syncthreads();
    load_tile<BK, HD>(kv_tile, tile.values, ld, j0, i_end, hd, round);
    __syncthreads();
    if (oi < i_end)
      add_row_products<HD>(acc, p_tile[orow], kv_tile, first_of[orow], oi, j0, BK, opos,
                           kRowThreads);
  }
  if (oi < i_end) store_row(out + oi * g.heads * hd + h * hd, acc, 1.0f, opos, kRowThreads, hd);
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

// dQ: a block per tile of query rows and one head, its threads laid out as the forward's. A key
// tile's values first (d(p) = dO.v stays in the threads' registers), then its keys in the same
// buffer: d(scores) into shared memory, and their products with the keys.
template <class T>
__global__ void diff_q_kernel(float* diff_qkv, const float* diff_out, const float* qkv,
                              const float* lse, const float* delta, AttentionGeometry g,
                              float scale, bool round) {
  constexpr int HD = T::kHd, BQ = T::kQ, BK = T::kK;
  constexpr int kEntries = BQ * BK / kThreads, kRowThreads = kThreads / BQ;
  constexpr int kDims = HD / kRowThreads;
  static_assert(BQ * BK % kThreads == 0);
  __shared__ float q_tile[BQ][HD + 1], dout_tile[BQ][HD + 1];
  __shared__ float kv_tile[BK][HD + 1];  // the values, then the keys
  __shared__ float ds_tile[BQ][BK + 1];
  __shared__ Index first_of[BQ];
  __shared__ float lse_of[BQ], delta_of[BQ];
  const QueryTile tile = query_tile(g, qkv, BQ);
  const Index hd = g.head_dim, ld = tile.ld, i0 = tile.i0, i_end = tile.end, h = tile.h;
  load_query_rows<BQ, HD>(first_of, lse_of, delta_of, q_tile, dout_tile, g, qkv, diff_out, lse,
                          delta, h, i0, i_end, round);
  __syncthreads();
  const Index j_begin = first_of[0];
  const int c = threadIdx.x % BK, first_row = threadIdx.x / BK, row_step = kThreads / BK;
  auto row = [&](int k) { return first_row + row_step * k; };
  auto sees = [&](int r, Index j) { return i0 + r < i_end && j >= first_of[r] && j <= i0 + r; };
  const int orow = threadIdx.x / kRowThreads, opos = threadIdx.x % kRowThreads;
  const Index oi = i0 + orow;
  float acc[kDims] = {};
  for (Index j0 = j_begin; j0 < i_end; j0 += BK) {
    __syncthreads();
    load_tile<BK, HD>(kv_tile, tile.values, ld, j0, i_end, hd, round);
    __syncthreads();
    float dp[kEntries], dot[kEntries];
    dot_rows<HD>(dp, dout_tile, first_row, row_step, kv_tile[c]);
    __syncthreads();
    load_tile<BK, HD>(kv_tile, tile.keys, ld, j0, i_end, hd, round);
    __syncthreads();
    dot_rows<HD>(dot, q_tile, first_row, row_step, kv_tile[c]);
    ZL_UNROLL
    for (int k = 0; k < kEntries; ++k) {
      const int r = row(k);
      float ds = 0.0f;
      if (sees(r, j0 + c)) {
        const float p = expf(scale * dot[k] - lse_of[r]);
        ds = operand(p * (dp[k] - delta_of[r]), round);
      }
      ds_tile[r][c] = ds;
    }
    __syncthreads();
    if (oi < i_end)
      add_row_products<HD>(acc, ds_tile[orow], kv_tile, first_of[orow], oi, j0, BK, opos,
                           kRowThreads);
  }
  if (oi < i_end) store_row(diff_qkv + oi * ld + h * hd, acc, scale, opos, kRowThreads, hd);
}

// dK and dV: a block per tile of key rows and one KV head, meeting the query rows that see them
// a tile at a time, head by head of the KV head's group. The scores' layout is the forward's
// with the roles of the tiles kept (query rows r, key columns c); dK and dV's key row is
// kKeyThreads consecutive threads', each owning the dimensions kKeyThreads apart from its own.
template <class T>
__global__ void diff_kv_kernel(float* diff_qkv, const float* diff_out, const float* qkv,
                               const float* lse, const float* delta, AttentionGeometry g,
                               float scale, bool round) {
  constexpr int HD = T::kHd, BQ = T::kQ, BK = T::kK;
  // Fewer scores a tile than threads (the largest heads): the first BQ * BK threads take one.
  constexpr int kEntries = BQ * BK >= kThreads ? BQ * BK / kThreads : 1;
  constexpr int kKeyThreads = kThreads / BK;
  static_assert(BQ * BK % kThreads == 0 || kThreads % (BQ * BK) == 0);
  constexpr int kDims = HD / kKeyThreads;
  __shared__ float k_tile[BK][HD + 1], v_tile[BK][HD + 1];
  __shared__ float q_tile[BQ][HD + 1], dout_tile[BQ][HD + 1];
  __shared__ float p_tile[BQ][BK + 1], ds_tile[BQ][BK + 1];
  __shared__ Index first_of[BQ];
  __shared__ float lse_of[BQ], delta_of[BQ];
  const Index M = g.rows, hd = g.head_dim, ld = (g.heads + 2 * g.kv_heads) * hd;
  const Index group = g.heads / g.kv_heads;
  const Index j0 = blockIdx.x * static_cast<Index>(BK), kvh = blockIdx.y;
  const Index j_end = j0 + BK < M ? j0 + BK : M;
  const Index i_stop = query_end_of(g, j_end - 1);  // no later query row sees this tile
  load_tile<BK, HD>(k_tile, qkv + (g.heads + kvh) * hd, ld, j0, j_end, hd, round);
  load_tile<BK, HD>(v_tile, qkv + (g.heads + g.kv_heads + kvh) * hd, ld, j0, j_end, hd, round);
  const int krow = threadIdx.x / kKeyThreads, kpos = threadIdx.x % kKeyThreads;
  const Index kj = j0 + krow;
  const Index k_stop = kj < j_end ? query_end_of(g, kj) : 0;
  float dk[kDims] = {}, dv[kDims] = {};
  for (Index h = kvh * group; h < (kvh + 1) * group; ++h) {
    for (Index i0 = j0; i0 < i_stop; i0 += BQ) {
      __syncthreads();  // the last query tile's reads are done
      const Index i_end = i0 + BQ < i_stop ? i0 + BQ : i_stop;
      load_query_rows<BQ, HD>(first_of, lse_of, delta_of, q_tile, dout_tile, g, qkv, diff_out, lse,
                              delta, h, i0, i_end, round);
      __syncthreads();
      if (threadIdx.x < BQ * BK) {
        const int c = threadIdx.x % BK, first_row = threadIdx.x / BK, row_step = kThreads / BK;
        float dot[kEntries], dp[kEntries];
        dot_rows<HD>(dot, q_tile, first_row, row_step, k_tile[c]);
        dot_rows<HD>(dp, dout_tile, first_row, row_step, v_tile[c]);
        ZL_UNROLL
        for (int k = 0; k < kEntries; ++k) {
          const int r = first_row + row_step * k;
          const Index i = i0 + r, j = j0 + c;
          float p = 0.0f, ds = 0.0f;
          if (i < i_end && j < j_end && j >= first_of[r] && j <= i) {
            p = expf(scale * dot[k] - lse_of[r]);
            ds = operand(p * (dp[k] - delta_of[r]), round);
          }
          p_tile[r][c] = operand(p, round);
          ds_tile[r][c] = ds;
        }
      }
      __syncthreads();
      if (kj >= j_end) continue;
      // The query rows [kj, k_stop) see key row kj.
      const int from = static_cast<int>(kj > i0 ? kj - i0 : 0);
      const int to = static_cast<int>(k_stop - i0 < BQ ? k_stop - i0 : BQ);
      for (int r = from; r < to; ++r) {
        const float pw = p_tile[r][krow], dw = ds_tile[r][krow];
        ZL_UNROLL
        for (int k = 0; k < kDims; ++k) {
          dv[k] += pw * dout_tile[r][kpos + kKeyThreads * k];
          dk[k] += dw * q_tile[r][kpos + kKeyThreads * k];
        }
      }
    }
  }
  if (kj >= j_end) return;
  store_row(diff_qkv + kj * ld + (g.heads + kvh) * hd, dk, scale, kpos, kKeyThreads, hd);
  store_row(diff_qkv + kj * ld + (g.heads + g.kv_heads + kvh) * hd, dv, 1.0f, kpos, kKeyThreads,
            hd);
}

// The tiles per head-size bucket, each pass's shared memory within 48 KB (forward 34-38 KB, dQ
// 29-43 KB, dK/dV 33-42 KB).
using Forward64 = Tile<64, 64, 32>;
using Forward128 = Tile<128, 32, 32>;
using Forward256 = Tile<256, 16, 16>;
using DiffQ64 = Tile<64, 32, 32>;
using DiffQ128 = Tile<128, 32, 16>;
using DiffQ256 = Tile<256, 16, 8>;
using DiffKv64 = Tile<64, 32, 32>;
using DiffKv128 = Tile<128, 16, 16>;
using DiffKv256 = Tile<256, 8, 8>;

dim3 tiles(Index rows, int per_tile, Index heads) {
  return dim3(static_cast<unsigned>((rows + per_tile - 1) / per_tile),
              static_cast<unsigned>(heads));
}

template <class T>
void launch_forward(cudaStream_t s, float* out, float* lse, const float* qkv,
                    const AttentionGeometry& g, float scale, bool round) {
  ZL_LAUNCH(forward_kernel<T>, tiles(g.rows, T::kQ, g.heads), kThreads, s)
  (out, lse, qkv, g, scale, round);
}

template <class Q, class KV>
void launch_backward(cudaStream_t s, float* diff_qkv, const float* diff_out, const float* qkv,
                     const float* lse, const float* delta, const AttentionGeometry& g, float scale,
                     bool round) {
  ZL_LAUNCH(diff_q_kernel<Q>, tiles(g.rows, Q::kQ, g.heads), kThreads, s)
  (diff_qkv, diff_out, qkv, lse, delta, g, scale, round);
  ZL_LAUNCH(diff_kv_kernel<KV>, tiles(g.rows, KV::kK, g.kv_heads), kThreads, s)
  (diff_qkv, diff_out, qkv, lse, delta, g, scale, round);
}

}  // namespace

void attention_forward(cudaStream_t s, float* out, float* lse, const float* qkv,
                       const AttentionGeometry& g, bool round_operands) {
  if (g.rows == 0) return;
  const float scale = attention_scale(g.head_dim);
  if (g.head_dim <= 64)
    launch_forward<Forward64>(s, out, lse, qkv, g, scale, round_operands);
  else if (g.head_dim <= 128)
    launch_forward<Forward128>(s, out, lse, qkv, g, scale, round_operands);
  else
    launch_forward<Forward256>(s, out, lse, qkv, g, scale, round_operands);
  check_launch("attention_forward", g.rows, g.heads * g.head_dim);
}

void attention_backward(cudaStream_t s, float* diff_qkv, const float* diff_out, const float* qkv,
                        const float* out, const float* lse, float* delta,
                        const AttentionGeometry& g, bool round_operands) {
  if (g.rows == 0) return;
  const float scale = attention_scale(g.head_dim);
  ZL_LAUNCH(delta_kernel, grid_for(g.rows * g.heads, kThreads), kThreads, s)
  (delta, diff_out, out, g);
  if (g.head_dim <= 64)
    launch_backward<DiffQ64, DiffKv64>(s, diff_qkv, diff_out, qkv, lse, delta, g, scale,
                                       round_operands);
  else if (g.head_dim <= 128)
    launch_backward<DiffQ128, DiffKv128>(s, diff_qkv, diff_out, qkv, lse, delta, g, scale,
                                         round_operands);
  else
    launch_backward<DiffQ256, DiffKv256>(s, diff_qkv, diff_out, qkv, lse, delta, g, scale,
                                         round_operands);
  check_launch("attention_backward", g.rows, g.heads * g.head_dim);
}

}  // namespace zerolora::cuda
