// The LoRA branch on the device (ops/lora_branch.hpp) for ranks up to kLoraFusedMaxRank, forward
// and backward as kernels that read each activation once, the dropout mask made on the fly
// (device_math.cuh's DropoutDraw: the CPU's masks exactly) instead of a dropped copy of the input:
//   contract:     small [M, r] (=) scale drop(big) W^T   z = drop(x) A^T;   dz = s dy B
//   expand:       big [M, n]  += drop(scale small W)     y += s z B^T
//   outer:        G [r, n]    += scale small^T drop(big) dB += s dy^T z
//   outer_expand: outer's G, and expand's into diff      dA += dz^T drop(x) and dx += drop'(dz A)
// W(k, j) and G(k, j), k < r, j < n, sit at w[k wk + j wj]: A [r, in] is wk = in, wj = 1; B
// [out, r] is wk = 1, wj = r. The rank's accumulators live in registers (arrays of the rank's
// bound, 4, 8 or 16, the loops unrolled); outer sums fixed chunks of rows, then the chunks in
// order: the same bits every run. They replace cuBLASLt's rank-r GEMMs and the dropped copies,
// which took 23% of a 7B step on an H200 (BENCHMARKS.md). In the backward, the outer product
// into dA and the expansion into dx read the same x and draw the same masks: they run as one
// kernel (lora_outer_expand), for a group of up to three branches that share x (q, k and v read
// the attention norm's output x and add to its gradient dx): x read once for their dA, dx read
// and written once for their terms, each element's mask drawn once a branch. The contraction
// takes one branch: grouped (x read once for the three z), it was slower than three single
// launches on an H100 (bench_kernels, 2026-12-06: q/k/v's forward 722 against 609 us at the 7B
// shape), so the forward runs branch by branch.
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
// Whether a lora_outer_expand thread keeps W's values of its column in registers for the whole
// chunk: not where the group holds 24 values a thread or more (three branches at rank bound 8),
// whose accumulators and W would spill at two blocks an SM (sm_80); those reload W's column for
// each row, as lora_expand does, from L1.
template <int R, int G>
inline constexpr bool kOuterExpandKeepsW = (R * G) < 24;

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
// dropout keys in registers for its columns; G branches added in their order. lora_expand
// launches one (a group's backward runs lora_outer_expand), but the kernel keeps its loop over
// G: written for one branch alone, ptxas (nvcc 13.0, sm_90) gave it 48 registers at rank bound 4
// where this form keeps the 40 it had before (fewer registers, more blocks resident an SM).
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

// The rows of one chunk (kOuterRows) of each branch's small matrix and dropout keys, staged in
// the block's shared memory by all its threads (then a barrier) as the block's outer-product
// kernel begins; each thread keeps its view of them.
template <int R, int G>
struct OuterChunk {
  using Small = float[G][kOuterRows * R];
  using Keys = std::uint64_t[G][kOuterRows];
  Small& small;
  Keys& key;
  Index first, rows;
  __device__ __forceinline__ OuterChunk(Small& shared_small, Keys& shared_key,
                                        const Branches<G>& br, Index M, int rank)
      : small(shared_small),
        key(shared_key),
        first(blockIdx.y * static_cast<Index>(kOuterRows)),
        rows(first + kOuterRows < M ? kOuterRows : M - first) {
    ZL_UNROLL for (int b = 0; b < G; ++b) {
      for (Index t = threadIdx.x; t < rows * rank; t += blockDim.x)
        small[b][t] = br.small[b][first * rank + t];
      for (Index t = threadIdx.x; t < rows; t += blockDim.x) key[b][t] = br.mask[b].row(first + t);
    }
    __syncthreads();
  }
  // small_b's row t where it sits in shared memory.
  __device__ __forceinline__ const float* row(int b, Index t, int rank) const {
    return small[b] + t * rank;
  }
  // small_b's row t in registers (zeros past the rank).
  __device__ __forceinline__ void load_row(float (&z)[R], int b, Index t, int rank) const {
    ZL_UNROLL for (int k = 0; k < R; ++k) z[k] = k < rank ? row(b, t, rank)[k] : 0.0f;
  }
  // acc += a row of small times d, the row as row() or load_row() gives it.
  template <class Row>
  static __device__ __forceinline__ void accumulate(float (&acc)[R], const Row& z, float d,
                                                    int rank) {
    ZL_UNROLL for (int k = 0; k < R; ++k) {
      if (k < rank) acc[k] += z[k] * d;
    }
  }
  // Each branch's sums of column j to partial [G][chunks, r, n] (branch b's at partial + b
  // chunks r n), for lora_outer_reduce_kernel.
  __device__ __forceinline__ void store(float* partial, const float (&acc)[G][R], Index j, Index n,
                                        int rank) const {
    const Index chunk = blockIdx.y, chunks = gridDim.y;
    ZL_UNROLL for (int b = 0; b < G; ++b) {
      ZL_UNROLL for (int k = 0; k < R; ++k) {
        if (k < rank) partial[((b * chunks + chunk) * rank + k) * n + j] = acc[b][k];
      }
    }
  }
};

// The outer product's pass, block (x, chunk) over its kOuterRows rows for its columns, a thread a
// column: each branch's partial sums of G_b += small_b^T drop_b(big), stored for
// lora_outer_reduce_kernel. With kExpand, the pass is lora_outer_expand's: it also adds
// drop_b(small_b W_b) into diff, each element's mask drawn once a branch for both (where
// lora_outer and lora_expand drew it twice), W_b's column loaded once a chunk where
// kOuterExpandKeepsW says to keep it, else once a row (lora_expand loaded it for every element):
// the same arithmetic in the same order as those two kernels, the same bits. Without, it reads
// small_b's rows from shared memory as it sums them, where kExpand's form, which uses each row
// twice, loads them into registers first (lora_outer in that form took 48 to 80 registers
// rather than 48 to 61).
template <int R, int G, bool kExpand>
__device__ __forceinline__ void outer_pass(float* partial, float* diff, Index diff_rs,
                                           const Branches<G>& br, const float* big, Index big_rs,
                                           Index M, Index n, int rank, float scale) {
  __shared__ float chunk_small[G][kOuterRows * R];
  __shared__ std::uint64_t chunk_key[G][kOuterRows];
  const OuterChunk<R, G> chunk(chunk_small, chunk_key, br, M, rank);
  ZL_GRID_STRIDE(j, n) {
    constexpr bool kKeepsW = kExpand && kOuterExpandKeepsW<R, G>;
    float acc[G][R], kept_w[G][R];
    ZL_UNROLL for (int b = 0; b < G; ++b) {
      if constexpr (kKeepsW) br.w[b].load(kept_w[b], static_cast<int>(j), rank);
      ZL_UNROLL for (int k = 0; k < R; ++k) acc[b][k] = 0.0f;
    }
    const float* column = big + chunk.first * big_rs + j;
    float* diff_column = kExpand ? diff + chunk.first * diff_rs + j : nullptr;
    for (Index t0 = 0; t0 < chunk.rows; t0 += kOuterInFlight) {
      float v[kOuterInFlight], dv[kOuterInFlight];
      ZL_UNROLL for (int u = 0; u < kOuterInFlight; ++u) {
        const bool in = t0 + u < chunk.rows;
        v[u] = in ? column[(t0 + u) * big_rs] : 0.0f;
        if constexpr (kExpand) dv[u] = in ? diff_column[(t0 + u) * diff_rs] : 0.0f;
      }
      ZL_UNROLL for (int u = 0; u < kOuterInFlight; ++u) {
        const Index t = t0 + u;
        if (t >= chunk.rows) break;
        float value = kExpand ? dv[u] : 0.0f;
        ZL_UNROLL for (int b = 0; b < G; ++b) {
          const DropoutDraw& mask = br.mask[b];
          const bool kept = mask.keeps(chunk.key[b][t], j);
          if constexpr (kExpand) {
            float z[R];
            chunk.load_row(z, b, t, rank);
            chunk.accumulate(acc[b], z, mask.dropped(kept, v[u]), rank);
            float wv[R];
            if constexpr (kKeepsW) {
              ZL_UNROLL for (int k = 0; k < R; ++k) wv[k] = kept_w[b][k];
            } else {
              br.w[b].load(wv, static_cast<int>(j), rank);
            }
            value = __fadd_rn(value, mask.dropped(kept, expansion_term(z, wv, rank, scale)));
          } else {
            chunk.accumulate(acc[b], chunk.row(b, t, rank), mask.dropped(kept, v[u]), rank);
          }
        }
        if constexpr (kExpand) diff_column[t * diff_rs] = value;
      }
    }
    chunk.store(partial, acc, j, n, rank);
  }
}

// lora_outer's partial sums, a single branch.
template <int R>
__global__ void lora_outer_partial_kernel(float* partial, Branches<1> br, const float* big,
                                          Index big_rs, Index M, Index n, int rank) {
  outer_pass<R, 1, false>(partial, nullptr, 0, br, big, big_rs, M, n, rank, 0.0f);
}

// lora_outer_expand's pass over the shared input x (big) and its gradient dx (diff) for a group
// of branches: dA_b's partial sums and dx += drop_b(dz_b A_b).
template <int R, int G>
__global__ void __launch_bounds__(kThreads, kMinBlocks<R, G>)
    lora_outer_expand_kernel(float* partial, float* diff, Index diff_rs, Branches<G> br,
                             const float* big, Index big_rs, Index M, Index n, int rank,
                             float scale) {
  outer_pass<R, G, true>(partial, diff, diff_rs, br, big, big_rs, M, n, rank, scale);
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

// The kernels that take one branch (the contraction: see the top of this file; the expansion and
// the outer product alone: a group's backward runs them as lora_outer_expand).
void check_one_branch(const LoraBranches& branches, int rank, const char* kernel) {
  check_branches(branches, rank, kernel);
  if (branches.count != 1) refuse_launch(kernel, "a group of LoRA branches: it takes one");
}

Index outer_chunks(Index M, const char* kernel) {
  const Index chunks = (M + kOuterRows - 1) / kOuterRows;
  if (chunks > 65535) refuse_launch(kernel, "more than 65535 x 256 rows");
  return chunks;
}

// G_b += scale (the sum of the chunks' partial sums), for each branch b.
void reduce_outer_partials(cudaStream_t s, const LoraBranches& branches, Index gk, Index gj,
                           const float* partial, Index chunks, Index M, Index n, int rank,
                           float scale, const char* kernel) {
  for (int b = 0; b < branches.count; ++b) {
    ZL_LAUNCH(lora_outer_reduce_kernel, grid_rows_cols(rank, n, kThreads), kThreads, s)
    (branches.out[b], gk, gj, partial + b * chunks * rank * n, chunks, n, rank, scale);
    check_launch(kernel, M, n);
  }
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
  check_one_branch(branches, rank, "lora_contract");
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
  check_one_branch(branches, rank, "lora_expand");
  if (M * n == 0) return;
  with_rank_bound<kMaxRank>(rank, [&](auto bound) {
    constexpr int R = decltype(bound)::value;
    static constexpr auto kernel = &lora_expand_kernel<R, 1>;
    ZL_LAUNCH(kernel, grid_rows_cols(M, 1, kThreads), kThreads, s)  // a row each
    (big, big_rs, branches_of<1>(branches, branches.w, wk, wj, n, rank, p, row_keys, "lora_expand"),
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
  check_one_branch(branches, rank, "lora_outer");
  if (M * n == 0) return;
  const Index chunks = outer_chunks(M, "lora_outer");
  const dim3 grid(grid_for(n, kThreads), static_cast<unsigned>(chunks));
  with_rank_bound<kMaxRank>(rank, [&](auto bound) {
    constexpr int R = decltype(bound)::value;
    static constexpr auto kernel = &lora_outer_partial_kernel<R>;
    ZL_LAUNCH(kernel, grid, kThreads, s)
    (partial, branches_of<1>(branches, nullptr, 0, 0, n, rank, p, row_keys, "lora_outer"), big,
     big_rs, M, n, rank);
  });
  check_launch("lora_outer (partial sums)", M, n);
  reduce_outer_partials(s, branches, gk, gj, partial, chunks, M, n, rank, scale, "lora_outer");
}

void lora_outer_expand(cudaStream_t s, const LoraBranches& branches, Index gk, Index gj,
                       const float* big, Index big_rs, float* diff, Index diff_rs, Index wk,
                       Index wj, Index M, Index n, int rank, float scale, double p,
                       const std::uint64_t* row_keys, float* partial) {
  check_branches(branches, rank, "lora_outer_expand");
  if (M * n == 0) return;
  // Each thread reads its column of big and then writes diff's: rows that overlap would be read
  // after another thread's write.
  const float* big_end = big + (M - 1) * big_rs + n;
  const float* diff_end = diff + (M - 1) * diff_rs + n;
  if (big < diff_end && diff < big_end)
    refuse_launch("lora_outer_expand", "the input and its gradient overlap");
  const Index chunks = outer_chunks(M, "lora_outer_expand");
  const dim3 grid(grid_for(n, kThreads), static_cast<unsigned>(chunks));
  with_bounds(rank, branches.count, [&](auto bound, auto count) {
    constexpr int R = decltype(bound)::value, G = decltype(count)::value;
    static constexpr auto kernel = &lora_outer_expand_kernel<R, G>;
    ZL_LAUNCH(kernel, grid, kThreads, s)
    (partial, diff, diff_rs,
     branches_of<G>(branches, branches.w, wk, wj, n, rank, p, row_keys, "lora_outer_expand"), big,
     big_rs, M, n, rank, scale);
  });
  check_launch("lora_outer_expand (partial sums and input gradient)", M, n);
  reduce_outer_partials(s, branches, gk, gj, partial, chunks, M, n, rank, scale,
                        "lora_outer_expand");
}

}  // namespace zerolora::cuda
