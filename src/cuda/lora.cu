// The LoRA branch on the device (ops/lora_branch.hpp) for ranks up to kLoraFusedMaxRank, forward
// and backward as three kernels that read each activation once, the dropout mask made on the fly
// (device_math.cuh's DropoutDraw: the CPU's masks exactly) instead of a dropped copy of the input:
//   contract: small [M, r] (=) scale drop(big) W^T       z = drop(x) A^T;   dz = s dy B
//   expand:   big [M, n]  += drop(scale small W)         y += s z B^T;      dx += drop'(dz A)
//   outer:    G [r, n]    += scale small^T drop(big)     dB += s dy^T z;    dA += dz^T drop(x)
// W(k, j) and G(k, j), k < r, j < n, sit at w[k wk + j wj]: A [r, in] is wk = in, wj = 1; B
// [out, r] is wk = 1, wj = r. The rank's accumulators live in registers (arrays of the rank's
// bound, 4, 8 or 16, the loops unrolled); outer sums fixed chunks of rows, then the chunks in
// order: the same bits every run. They replace cuBLASLt's rank-r GEMMs and the dropped copies,
// which took 23% of a 7B step on an H200 (BENCHMARKS.md). In the backward, branches that share
// their big matrix (q, k and v read the attention norm's output x and add to its gradient dx)
// run as a group of up to three in one launch: x read once for their dA, dx read and written
// once for their terms. The contraction takes one branch: grouped (x read once for the three
// z), it was slower than three single launches on an H100 (bench_kernels, 2026-12-06: q/k/v's
// forward 722 against 609 us at the 7B shape), so the forward runs branch by branch.
#include <type_traits>

#include "cuda/lora_columns.cuh"

namespace zerolora::cuda {
namespace {

constexpr int kMaxRank = 16;       // ops/lora_branch.hpp's kLoraFusedMaxRank
constexpr Index kOuterRows = 256;  // rows per partial sum of outer
constexpr int kThreads = 256;
// Loads issued before any of them is used, so that a thread keeps several in flight (a thread
// that waits for each load before the next leaves HBM idle; the compiler cannot hoist a load
// above a store that may alias it, nor always unroll a loop of unknown trip count):
constexpr int kExpandColumns = 4;  // columns per pass of an expansion thread
constexpr int kOuterInFlight = 8;  // rows per pass of an outer-product thread
constexpr int kContractRows = 2;   // rows per contraction warp: each weight load serves both
constexpr int kContractSteps = 4;  // and each lane loads four columns of each row per pass

// The kernels are compiled for a rank bound R (4, 8 or 16): the rank's accumulators and values
// are arrays of R registers, so the seed's rank 4 does not pay for 16 (fewer registers, more
// threads resident; __launch_bounds__ asks ptxas for at least three blocks of kThreads per SM
// below R 16 for a single branch, two for a group (kMinBlocks): with sm_90, 56 registers for the
// contraction and 40 for the expansion at R 4).
// Each kernel sums in the same order whatever R, kContractRows and the number of loads in
// flight: the same bits as one row and one load at a time.

// The branches of one launch (LoraBranches: one, or a group that shares its big matrix, as q,
// k and v share the norm's output): each branch's small matrix, W and dropout mask, the same
// for every branch but its key. A grouped launch reads each big value once for all of them.
template <int G>
struct Branches {
  const float* small[G];
  float* out[G];
  WeightColumns w[G];
  DropoutDraw mask[G];
};

// Blocks that must fit an SM at once (registers per thread at most 65536 / (256 x blocks)): a
// single branch's as before the groups, a group's two (128 registers).
template <int R, int G>
inline constexpr int kMinBlocks = G > 1 ? 2 : (R <= 8 ? 3 : 1);

// A warp per kContractRows rows: the lanes stride over the rows' n elements, each keeping r
// partial dot products per row, then summed over the warp. Each weight value loaded serves the
// warp's rows.
template <int R>
__global__ void __launch_bounds__(kThreads, kMinBlocks<R, 1>)
    lora_contract_kernel(Branches<1> br, const float* big, Index big_rs, Index M, int n, int rank,
                         float scale) {
  constexpr int kRows = kContractRows;
  const WeightColumns& w = br.w[0];
  const DropoutDraw& mask = br.mask[0];
  const int lane = threadIdx.x & 31;
  const Index warps = static_cast<Index>(gridDim.x) * (blockDim.x / 32);
  const Index groups = (M + kRows - 1) / kRows;
  for (Index g = (blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x) / 32; g < groups;
       g += warps) {
    const Index first = g * kRows;
    const int rows = first + kRows <= M ? kRows : static_cast<int>(M - first);
    float acc[kRows][R];
    std::uint64_t row_key[kRows];
    ZL_UNROLL for (int u = 0; u < kRows; ++u) {
      row_key[u] = u < rows ? mask.row(first + u) : 0;
      ZL_UNROLL for (int k = 0; k < R; ++k) acc[u][k] = 0.0f;
    }
    const float* x = big + first * big_rs;
    for (int j0 = lane; j0 < n; j0 += 32 * kContractSteps) {
      float v[kContractSteps][kRows];
      ZL_UNROLL for (int t = 0; t < kContractSteps; ++t) {
        const int j = j0 + 32 * t;
        ZL_UNROLL for (int u = 0; u < kRows; ++u) v[t][u] =
            u < rows && j < n ? x[u * big_rs + j] : 0.0f;
      }
      ZL_UNROLL for (int t = 0; t < kContractSteps; ++t) {
        const int j = j0 + 32 * t;
        if (j >= n) break;
        float wv[R];
        w.load(wv, j, rank);
        ZL_UNROLL for (int u = 0; u < kRows; ++u) {
          const float d = mask.apply(row_key[u], j, v[t][u]);
          ZL_UNROLL for (int k = 0; k < R; ++k) {
            if (k < rank) acc[u][k] += d * wv[k];
          }
        }
      }
    }
    ZL_UNROLL for (int u = 0; u < kRows; ++u) {
      ZL_UNROLL for (int k = 0; k < R; ++k) {
        if (k < rank) {  // rank is the same for every lane: the whole warp sums
          const float total = warp_sum(acc[u][k]);
          if (lane == 0 && u < rows) br.out[0][(first + u) * rank + k] = scale * total;
        }
      }
    }
  }
}

// One block per row of big: each thread keeps the row's r values of each branch's small and its
// dropout keys in registers for its columns. A group adds its branches in their order, each
// rounded as a launch of its own would have stored it.
template <int R, int G>
__global__ void __launch_bounds__(kThreads, kMinBlocks<R, G>)
    lora_expand_kernel(float* big, Index big_rs, Branches<G> br, Index M, int n, int rank,
                       float scale) {
  for (Index i = blockIdx.y; i < M; i += gridDim.y) {
    float z[G][R];
    std::uint64_t row_key[G];
    ZL_UNROLL for (int b = 0; b < G; ++b) {
      ZL_UNROLL for (int k = 0; k < R; ++k) z[b][k] = k < rank ? br.small[b][i * rank + k] : 0.0f;
      row_key[b] = br.mask[b].row(i);
    }
    float* y = big + i * big_rs;
    for (int j0 = threadIdx.x; j0 < n; j0 += kExpandColumns * blockDim.x) {
      float before[kExpandColumns];
      ZL_UNROLL for (int u = 0; u < kExpandColumns; ++u) {
        const int j = j0 + u * static_cast<int>(blockDim.x);
        before[u] = j < n ? y[j] : 0.0f;
      }
      ZL_UNROLL for (int u = 0; u < kExpandColumns; ++u) {
        const int j = j0 + u * static_cast<int>(blockDim.x);
        if (j >= n) continue;
        float value = before[u];
        ZL_UNROLL for (int b = 0; b < G; ++b) {
          float wv[R];
          br.w[b].load(wv, j, rank);
          value = __fadd_rn(value,
                            br.mask[b].apply(row_key[b], j, expansion_term(z[b], wv, rank, scale)));
        }
        y[j] = value;
      }
    }
  }
}

// partial [G][chunks, r, n] (branch b's at partial + b chunks r n): block (x, chunk) sums its
// kOuterRows rows for its columns. The chunk's rows of each branch's small and their dropout
// keys are staged in shared memory once per block.
template <int R, int G>
__global__ void lora_outer_partial_kernel(float* partial, Branches<G> br, const float* big,
                                          Index big_rs, Index M, Index n, int rank) {
  __shared__ float chunk_small[G][kOuterRows * R];
  __shared__ std::uint64_t chunk_key[G][kOuterRows];
  const Index chunk = blockIdx.y, chunks = gridDim.y;
  const Index first = chunk * kOuterRows;
  const Index rows = first + kOuterRows < M ? kOuterRows : M - first;
  ZL_UNROLL for (int b = 0; b < G; ++b) {
    for (Index t = threadIdx.x; t < rows * rank; t += blockDim.x)
      chunk_small[b][t] = br.small[b][first * rank + t];
    for (Index t = threadIdx.x; t < rows; t += blockDim.x)
      chunk_key[b][t] = br.mask[b].row(first + t);
  }
  __syncthreads();
  for (Index j = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; j < n;
       j += static_cast<Index>(gridDim.x) * blockDim.x) {
    float acc[G][R];
    ZL_UNROLL for (int b = 0; b < G; ++b) {
      ZL_UNROLL for (int k = 0; k < R; ++k) acc[b][k] = 0.0f;
    }
    const float* column = big + first * big_rs + j;
    for (Index t0 = 0; t0 < rows; t0 += kOuterInFlight) {
      float v[kOuterInFlight];
      ZL_UNROLL for (int u = 0; u < kOuterInFlight; ++u) v[u] =
          t0 + u < rows ? column[(t0 + u) * big_rs] : 0.0f;
      ZL_UNROLL for (int u = 0; u < kOuterInFlight; ++u) {
        const Index t = t0 + u;
        if (t >= rows) break;
        ZL_UNROLL for (int b = 0; b < G; ++b) {
          const float d = br.mask[b].apply(chunk_key[b][t], j, v[u]);
          ZL_UNROLL for (int k = 0; k < R; ++k) {
            if (k < rank) acc[b][k] += chunk_small[b][t * rank + k] * d;
          }
        }
      }
    }
    ZL_UNROLL for (int b = 0; b < G; ++b) {
      ZL_UNROLL for (int k = 0; k < R; ++k) {
        if (k < rank) partial[((b * chunks + chunk) * rank + k) * n + j] = acc[b][k];
      }
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

// Calls launch(rank bound, branch count): the rank bound as with_rank_bound
// (lora_columns.cuh) chooses it, the count as a std::integral_constant 1..kLoraGroupMax (a
// group's rank at most kLoraGroupMaxRank: its registers and shared memory grow with both).
template <class Launch>
void with_bounds(int rank, int count, Launch&& launch) {
  with_rank_bound<kMaxRank>(rank, [&](auto bound) {
    if (count == 1)
      launch(bound, std::integral_constant<int, 1>{});
    else if constexpr (decltype(bound)::value <= kLoraGroupMaxRank) {
      if (count == 2)
        launch(bound, std::integral_constant<int, 2>{});
      else
        launch(bound, std::integral_constant<int, 3>{});
    } else {  // (check_branches refuses it first)
      refuse_launch("lora kernels", "a group of LoRA branches of rank above 8");
    }
  });
}

void check_branches(const LoraBranches& branches, int rank, const char* kernel) {
  if (rank < 1 || rank > kMaxRank) refuse_launch(kernel, "the rank is outside 1..16");
  if (branches.count < 1 || branches.count > kLoraGroupMax)
    refuse_launch(kernel, "a group of other than 1 to 3 LoRA branches");
  if (branches.count > 1 && rank > kLoraGroupMaxRank)
    refuse_launch(kernel, "a group of LoRA branches of rank above 8");
}

// The kernels' view of the branches: W's columns at wk, wj (none for outer, which writes its G_b
// through the partial sums), masks of dropout p.
template <int G>
Branches<G> branches_of(const LoraBranches& b, const float* const* w, Index wk, Index wj, Index n,
                        int rank, double p, const std::uint64_t* row_keys, const char* kernel) {
  Branches<G> br{};
  for (int i = 0; i < G; ++i) {
    br.small[i] = b.small[i];
    br.out[i] = b.out[i];
    if (w) br.w[i] = weight_columns(w[i], wk, wj, n, rank, kernel);
    br.mask[i] = make_dropout_draw(p, b.key[i], row_keys);
  }
  return br;
}

}  // namespace

void lora_contract(cudaStream_t s, const LoraBranches& branches, const float* big, Index big_rs,
                   Index wk, Index wj, Index M, Index n, int rank, float scale, double p,
                   const std::uint64_t* row_keys) {
  check_branches(branches, rank, "lora_contract");
  if (branches.count != 1)  // (see the top of this file)
    refuse_launch("lora_contract", "a group of LoRA branches: the contraction takes one");
  if (M == 0) return;
  with_rank_bound<kMaxRank>(rank, [&](auto bound) {
    constexpr int R = decltype(bound)::value;
    static constexpr auto kernel = &lora_contract_kernel<R>;
    ZL_LAUNCH(kernel, grid_for((M + kContractRows - 1) / kContractRows * 32, kThreads), kThreads, s)
    (branches_of<1>(branches, branches.w, wk, wj, n, rank, p, row_keys, "lora_contract"), big,
     big_rs, M, static_cast<int>(n), rank, scale);
  });
  check_launch("lora_contract", M, n);
}

void lora_expand(cudaStream_t s, float* big, Index big_rs, const LoraBranches& branches, Index wk,
                 Index wj, Index M, Index n, int rank, float scale, double p,
                 const std::uint64_t* row_keys) {
  check_branches(branches, rank, "lora_expand");
  if (M * n == 0) return;
  with_bounds(rank, branches.count, [&](auto bound, auto count) {
    constexpr int R = decltype(bound)::value, G = decltype(count)::value;
    static constexpr auto kernel = &lora_expand_kernel<R, G>;
    ZL_LAUNCH(kernel, grid_rows_cols(M, 1, kThreads), kThreads, s)  // a row each
    (big, big_rs, branches_of<G>(branches, branches.w, wk, wj, n, rank, p, row_keys, "lora_expand"),
     M, static_cast<int>(n), rank, scale);
  });
  check_launch("lora_expand", M, n);
}

Index lora_outer_scratch(Index M, Index n, int rank, int count) {
  return count * ((M + kOuterRows - 1) / kOuterRows) * rank * n;
}

void lora_outer(cudaStream_t s, const LoraBranches& branches, Index gk, Index gj, const float* big,
                Index big_rs, Index M, Index n, int rank, float scale, double p,
                const std::uint64_t* row_keys, float* partial) {
  check_branches(branches, rank, "lora_outer");
  if (M * n == 0) return;
  const Index chunks = (M + kOuterRows - 1) / kOuterRows;
  if (chunks > 65535) refuse_launch("lora_outer", "more than 65535 x 256 rows");
  const dim3 grid(grid_for(n, kThreads), static_cast<unsigned>(chunks));
  with_bounds(rank, branches.count, [&](auto bound, auto count) {
    constexpr int R = decltype(bound)::value, G = decltype(count)::value;
    static constexpr auto kernel = &lora_outer_partial_kernel<R, G>;
    ZL_LAUNCH(kernel, grid, kThreads, s)
    (partial, branches_of<G>(branches, nullptr, 0, 0, n, rank, p, row_keys, "lora_outer"), big,
     big_rs, M, n, rank);
  });
  check_launch("lora_outer (partial sums)", M, n);
  for (int b = 0; b < branches.count; ++b) {
    ZL_LAUNCH(lora_outer_reduce_kernel, grid_rows_cols(rank, n, kThreads), kThreads, s)
    (branches.out[b], gk, gj, partial + b * chunks * rank * n, chunks, n, rank, scale);
    check_launch("lora_outer", M, n);
  }
}

}  // namespace zerolora::cuda
