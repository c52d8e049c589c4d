// The LoRA branch on the device (ops/lora_branch.hpp) for ranks up to kLoraFusedMaxRank, forward
// and backward as three kernels that read each activation once, the dropout mask made on the fly
// (device_math.cuh's DropoutDraw: the CPU's masks exactly) instead of a dropped copy of the input:
//   contract: small [M, r] (=) scale drop(big) W^T       z = drop(x) A^T;   dz = s dy B
//   expand:   big [M, n]  += drop(scale small W)         y += s z B^T;      dx += drop'(dz A)
//   outer:    G [r, n]    += scale small^T drop(big)     dB += s dy^T z;    dA += dz^T drop(x)
// W(k, j) and G(k, j), k < r, j < n, sit at w[k wk + j wj]: A [r, in] is wk = in, wj = 1; B
// [out, r] is wk = 1, wj = r. The rank's accumulators live in registers (kMaxRank of them, the
// loops unrolled); outer sums fixed chunks of rows, then the chunks in order: the same bits
// every run. They replace cuBLASLt's rank-r GEMMs and the dropped copies, which took 23% of a
// 7B step on an H200 (BENCHMARKS.md).
#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

constexpr int kMaxRank = 16;       // ops/lora_branch.hpp's kLoraFusedMaxRank
constexpr Index kOuterRows = 256;  // rows per partial sum of outer
constexpr int kThreads = 256;
// Columns per pass of an expansion thread: their loads issued before any store, several in
// flight per thread (the compiler cannot move a load above a store that may alias it).
constexpr int kExpandColumns = 4;

// One warp per row: the lanes stride over the row's n elements, each keeping r partial dot
// products, then summed over the warp.
__global__ void lora_contract_kernel(float* small, const float* big, Index big_rs, const float* w,
                                     Index wk, Index wj, Index M, Index n, int rank, float scale,
                                     DropoutDraw mask) {
  const int lane = threadIdx.x & 31;
  const Index warps = static_cast<Index>(gridDim.x) * (blockDim.x / 32);
  for (Index i = (blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x) / 32; i < M;
       i += warps) {
    float acc[kMaxRank];
    ZL_UNROLL for (int k = 0; k < kMaxRank; ++k) acc[k] = 0.0f;
    const std::uint64_t row_key = mask.row(i);
    const float* x = big + i * big_rs;
    for (Index j = lane; j < n; j += 32) {
      const float v = mask.apply(row_key, j, x[j]);
      ZL_UNROLL for (int k = 0; k < kMaxRank; ++k) {
        if (k < rank) acc[k] += v * w[k * wk + j * wj];
      }
    }
    ZL_UNROLL for (int k = 0; k < kMaxRank; ++k) {
      if (k < rank) {  // rank is the same for every lane: the whole warp sums
        const float total = warp_sum(acc[k]);
        if (lane == 0) small[i * rank + k] = scale * total;
      }
    }
  }
}

// One block per row of big: each thread keeps the row's r values of small and its dropout key
// in registers for its columns.
__global__ void lora_expand_kernel(float* big, Index big_rs, const float* small, const float* w,
                                   Index wk, Index wj, Index M, Index n, int rank, float scale,
                                   DropoutDraw mask) {
  for (Index i = blockIdx.y; i < M; i += gridDim.y) {
    float z[kMaxRank];
    ZL_UNROLL for (int k = 0; k < kMaxRank; ++k) z[k] = k < rank ? small[i * rank + k] : 0.0f;
    const std::uint64_t row_key = mask.row(i);
    float* y = big + i * big_rs;
    for (Index j0 = threadIdx.x; j0 < n; j0 += kExpandColumns * blockDim.x) {
      float before[kExpandColumns];
      ZL_UNROLL for (int u = 0; u < kExpandColumns; ++u) {
        const Index j = j0 + u * static_cast<Index>(blockDim.x);
        before[u] = j < n ? y[j] : 0.0f;
      }
      ZL_UNROLL for (int u = 0; u < kExpandColumns; ++u) {
        const Index j = j0 + u * static_cast<Index>(blockDim.x);
        if (j >= n) continue;
        float sum = 0.0f;
        ZL_UNROLL for (int k = 0; k < kMaxRank; ++k) {
          if (k < rank) sum += z[k] * w[k * wk + j * wj];
        }
        y[j] = before[u] + mask.apply(row_key, j, scale * sum);
      }
    }
  }
}

// partial [chunks, r, n]: block (x, chunk) sums its kOuterRows rows for its columns. The
// chunk's rows of small and their dropout keys are staged in shared memory once per block.
__global__ void lora_outer_partial_kernel(float* partial, const float* small, const float* big,
                                          Index big_rs, Index M, Index n, int rank,
                                          DropoutDraw mask) {
  __shared__ float chunk_small[kOuterRows * kMaxRank];
  __shared__ std::uint64_t chunk_key[kOuterRows];
  const Index chunk = blockIdx.y;
  const Index first = chunk * kOuterRows;
  const Index rows = first + kOuterRows < M ? kOuterRows : M - first;
  for (Index t = threadIdx.x; t < rows * rank; t += blockDim.x)
    chunk_small[t] = small[first * rank + t];
  for (Index t = threadIdx.x; t < rows; t += blockDim.x) chunk_key[t] = mask.row(first + t);
  __syncthreads();
  for (Index j = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<Index>(gridDim.x) * blockDim.x) {
    float acc[kMaxRank];
    ZL_UNROLL for (int k = 0; k < kMaxRank; ++k) acc[k] = 0.0f;
    for (Index t = 0; t < rows; ++t) {
      const float v = mask.apply(chunk_key[t], j, big[(first + t) * big_rs + j]);
      ZL_UNROLL for (int k = 0; k < kMaxRank; ++k) {
        if (k < rank) acc[k] += chunk_small[t * rank + k] * v;
      }
    }
    ZL_UNROLL for (int k = 0; k < kMaxRank; ++k) {
      if (k < rank) partial[(chunk * rank + k) * n + j] = acc[k];
    }
  }
}

__global__ void lora_outer_reduce_kernel(float* g, Index gk, Index gj, const float* partial,
                                         Index chunks, Index n, int rank, float scale) {
  ZL_ROWS_COLS(k, j, rank, n) {
    float sum = 0.0f;
    for (Index c = 0; c < chunks; ++c) sum += partial[(c * rank + k) * n + j];
    g[k * gk + j * gj] += scale * sum;
  }
}

void check_rank(int rank, const char* kernel) {
  if (rank < 1 || rank > kMaxRank) refuse_launch(kernel, "the rank is outside 1..16");
}

}  // namespace

void lora_contract(cudaStream_t s, float* small, const float* big, Index big_rs, const float* w,
                   Index wk, Index wj, Index M, Index n, int rank, float scale, double p,
                   std::uint64_t key, const std::uint64_t* row_keys) {
  check_rank(rank, "lora_contract");
  if (M == 0) return;
  ZL_LAUNCH(lora_contract_kernel, grid_for(M * 32, kThreads), kThreads, s)
  (small, big, big_rs, w, wk, wj, M, n, rank, scale, make_dropout_draw(p, key, row_keys));
  check_launch("lora_contract", M, n);
}

void lora_expand(cudaStream_t s, float* big, Index big_rs, const float* small, const float* w,
                 Index wk, Index wj, Index M, Index n, int rank, float scale, double p,
                 std::uint64_t key, const std::uint64_t* row_keys) {
  check_rank(rank, "lora_expand");
  if (M * n == 0) return;
  ZL_LAUNCH(lora_expand_kernel, grid_rows_cols(M, 1, kThreads), kThreads, s)  // a block per row
  (big, big_rs, small, w, wk, wj, M, n, rank, scale, make_dropout_draw(p, key, row_keys));
  check_launch("lora_expand", M, n);
}

Index lora_outer_scratch(Index M, Index n, int rank) {
  return (M + kOuterRows - 1) / kOuterRows * rank * n;
}

void lora_outer(cudaStream_t s, float* g, Index gk, Index gj, const float* small, const float* big,
                Index big_rs, Index M, Index n, int rank, float scale, double p, std::uint64_t key,
                const std::uint64_t* row_keys, float* partial) {
  check_rank(rank, "lora_outer");
  if (M * n == 0) return;
  const Index chunks = (M + kOuterRows - 1) / kOuterRows;
  if (chunks > 65535) refuse_launch("lora_outer", "more than 65535 x 256 rows");
  const dim3 grid(grid_for(n, kThreads), static_cast<unsigned>(chunks));
  ZL_LAUNCH(lora_outer_partial_kernel, grid, kThreads, s)
  (partial, small, big, big_rs, M, n, rank, make_dropout_draw(p, key, row_keys));
  check_launch("lora_outer (partial sums)", M, n);
  ZL_LAUNCH(lora_outer_reduce_kernel, grid_rows_cols(rank, n, kThreads), kThreads, s)
  (g, gk, gj, partial, chunks, n, rank, scale);
  check_launch("lora_outer", M, n);
}

}  // namespace zerolora::cuda
