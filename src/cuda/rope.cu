// Rotary position embedding on the device (ops/rope.hpp), rotate_half layout, in place:
//   y[j] = x[j] c - x[j + h] s,   y[j + h] = x[j + h] c + x[j] s,   s negated for backward.
// The cos/sin tables are the CPU's RopeTable values, uploaded: the same angles bit for bit.
#include <algorithm>
#include <type_traits>

#include "cuda/lora_columns.cuh"

namespace zerolora::cuda {
namespace {

// Rows per thread of rotate_round where it adds LoRA expansions: B's rank values for each of
// the thread's columns (at rank 4, 16 bytes for each 4-byte activation) loaded once for that
// many rows, not every row.
constexpr Index kExpandingRows = 4;

// Heads per pass of a thread: their loads issued before any store, so that a thread has
// several in flight (the compiler cannot move a load above a store that may alias it).
constexpr int kHeadsPerPass = 4;

// The pair (x[j], x[j + half]) rotated by the angle whose cos is c and sin s (s negated: the
// backward's inverse rotation), for every kernel here. Each product and sum rounded apart, never
// fused into an FMA: nvcc's choice of which product to fuse could differ between kernels (a sign
// known at compile time in one, read at run time in another), and RoPE fused into a copy must
// give the bits RoPE alone gives.
__device__ __forceinline__ void rotate(float& a, float& b, float c, float s) {
  const float rotated_a = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
  const float rotated_b = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
  a = rotated_a;
  b = rotated_b;
}

__global__ void rope_kernel(float* x, const std::int32_t* positions, const float* cos_table,
                            const float* sin_table, Index half, Index M, Index row_stride,
                            Index heads, float sign) {
  // A thread per (row, j): the angle's cos and sin read once for all the row's heads.
  ZL_ROWS_COLS(row, j, M, half) {
    const Index p = positions[row];
    const float c = cos_table[p * half + j], s = sign * sin_table[p * half + j];
    float* x1 = x + row * row_stride + j;
    for (Index h0 = 0; h0 < heads; h0 += kHeadsPerPass, x1 += kHeadsPerPass * 2 * half) {
      float a[kHeadsPerPass] = {}, b[kHeadsPerPass] = {};
      ZL_UNROLL for (int u = 0; u < kHeadsPerPass; ++u) {
        if (h0 + u < heads) {
          a[u] = x1[u * 2 * half];
          b[u] = x1[u * 2 * half + half];
        }
      }
      ZL_UNROLL for (int u = 0; u < kHeadsPerPass; ++u) {
        if (h0 + u < heads) {
          rotate(a[u], b[u], c, s);
          x1[u * 2 * half] = a[u];
          x1[u * 2 * half + half] = b[u];
        }
      }
    }
  }
}

// The bf16 rounding of L values of a pair's two halves, stored at `rounded` and half on.
template <int L>
__device__ __forceinline__ void store_rounding(Bf16Bits* rounded, Index half,
                                               const FloatLanes<L>& low,
                                               const FloatLanes<L>& high) {
  Bf16Lanes<L> low16, high16;
  ZL_UNROLL for (int k = 0; k < L; ++k) {
    low16.v[k] = float_to_bf16(low.v[k]);
    high16.v[k] = float_to_bf16(high.v[k]);
  }
  group<Bf16Lanes<L>>(rounded, 0) = low16;
  group<Bf16Lanes<L>>(rounded + half, 0) = high16;
}

// RoPE's backward fused with the widening of cuDNN's bf16 gradients (UnrotateWiden): a thread
// per L columns of a half head (threadIdx.x) of one of q's, k's and v's heads, consecutive in
// the fused row (threadIdx.y and blockIdx.x), over rows (blockIdx.y).
template <int L>
__global__ void unrotate_widen_kernel(UnrotateWiden a) {
  const Index head = blockIdx.x * static_cast<Index>(blockDim.y) + threadIdx.y;
  if (head >= a.heads + 2 * a.kv_heads) return;
  const Index half = a.half, j = threadIdx.x * static_cast<Index>(L);
  const bool is_q = head < a.heads, rotated = head < a.heads + a.kv_heads;
  const Bf16Bits* src = is_q ? a.dq : rotated ? a.dk : a.dv;
  const Index src_ld = is_q ? a.q_ld : a.kv_ld;
  src += (is_q ? head : rotated ? head - a.heads : head - a.heads - a.kv_heads) * 2 * half + j;
  for (Index row = blockIdx.y; row < a.M; row += gridDim.y) {
    const Bf16Lanes<L> low = group<const Bf16Lanes<L>>(src + row * src_ld, 0),
                       high = group<const Bf16Lanes<L>>(src + row * src_ld + half, 0);
    FloatLanes<L> x, y;
    ZL_UNROLL for (int k = 0; k < L; ++k) {
      x.v[k] = bf16_to_float(low.v[k]);
      y.v[k] = bf16_to_float(high.v[k]);
    }
    if (rotated) {
      const Index at = static_cast<Index>(a.positions[row]) * half + j;
      const FloatLanes<L> c = group<const FloatLanes<L>>(a.cos_table + at, 0),
                          s = group<const FloatLanes<L>>(a.sin_table + at, 0);
      ZL_UNROLL for (int k = 0; k < L; ++k) rotate(x.v[k], y.v[k], c.v[k], -1.0f * s.v[k]);
    }
    float* dst = a.dst + row * a.ld + head * 2 * half + j;
    group<FloatLanes<L>>(dst, 0) = x;
    group<FloatLanes<L>>(dst + half, 0) = y;
    if (a.rounded) store_rounding(a.rounded + row * a.ld + head * 2 * half + j, half, x, y);
  }
}

// RotateRound's expansions as the kernel takes them: B's columns as lora.cu's kernels load
// them.
struct QkvExpansionColumns {
  const float* z[3];
  WeightColumns b[3];
  int rank;
  float scale;
};

// RoPE's forward fused with the bf16 copy of q/k/v for cuDNN (RotateRound), launched as
// unrotate_widen_kernel: q/k/v's LoRA expansions added (R > 0), q's and k's heads rotated, the
// heads that changed written in place and every head's bf16 rounding written. R: the LoRA
// rank's bound (4 or 8; 0: no expansions).
template <int L, int R>
__global__ void rotate_round_kernel(RotateRound a, QkvExpansionColumns lora) {
  const Index head = blockIdx.x * static_cast<Index>(blockDim.y) + threadIdx.y;
  if (head >= a.heads + 2 * a.kv_heads) return;
  const Index half = a.half, j = threadIdx.x * static_cast<Index>(L);
  const bool rotated = head < a.heads + a.kv_heads;
  // The head's LoRA branch (q, k or v) and its first column in that branch's columns.
  const int branch = head < a.heads ? 0 : rotated ? 1 : 2;
  const Index first_head = branch == 0 ? 0 : branch == 1 ? a.heads : a.heads + a.kv_heads;
  const int column = static_cast<int>((head - first_head) * 2 * half + j);
  // (chosen by value, not indexed by a run-time index: that could copy the parameters to
  // local memory)
  const float* z_branch = branch == 0 ? lora.z[0] : branch == 1 ? lora.z[1] : lora.z[2];
  const WeightColumns b_branch = branch == 0 ? lora.b[0] : branch == 1 ? lora.b[1] : lora.b[2];
  const bool expands = R > 0 && z_branch != nullptr;
  // B's values for the thread's columns (low: j.., high: j + half..), the same on every row:
  // loaded once, kept in registers for the thread's rows.
  float b_low[L][R > 0 ? R : 1] = {}, b_high[L][R > 0 ? R : 1] = {};
  if constexpr (R > 0) {
    if (expands) {
      ZL_UNROLL for (int k = 0; k < L; ++k) {
        b_branch.load(b_low[k], column + k, lora.rank);
        b_branch.load(b_high[k], column + static_cast<int>(half) + k, lora.rank);
      }
    }
  }
  for (Index row = blockIdx.y; row < a.M; row += gridDim.y) {
    float* x = a.x + row * a.ld + head * 2 * half + j;
    FloatLanes<L> low = group<FloatLanes<L>>(x, 0), high = group<FloatLanes<L>>(x + half, 0);
    if constexpr (R > 0) {
      if (expands) {  // as lora_expand_kernel adds a single branch's term
        float z[R];
        const float* z_row = z_branch + row * lora.rank;
        ZL_UNROLL for (int k = 0; k < R; ++k) z[k] = k < lora.rank ? z_row[k] : 0.0f;
        ZL_UNROLL for (int k = 0; k < L; ++k) {
          low.v[k] = __fadd_rn(low.v[k], expansion_term(z, b_low[k], lora.rank, lora.scale));
          high.v[k] = __fadd_rn(high.v[k], expansion_term(z, b_high[k], lora.rank, lora.scale));
        }
      }
    }
    if (rotated) {
      const Index at = static_cast<Index>(a.positions[row]) * half + j;
      const FloatLanes<L> c = group<const FloatLanes<L>>(a.cos_table + at, 0),
                          s = group<const FloatLanes<L>>(a.sin_table + at, 0);
      ZL_UNROLL for (int k = 0; k < L; ++k) rotate(low.v[k], high.v[k], c.v[k], s.v[k]);
    }
    if (rotated || expands) {
      group<FloatLanes<L>>(x, 0) = low;
      group<FloatLanes<L>>(x + half, 0) = high;
    }
    store_rounding(a.rounded + row * a.ld + head * 2 * half + j, half, low, high);
  }
}

// The two kernels above over q's, k's and v's heads of M rows: a thread per L columns of half a
// head (threadIdx.x), as many heads a block as make 256 threads (threadIdx.y, then blockIdx.x),
// `rows` rows a block along blockIdx.y, rows gridDim.y apart (the kernels loop over the rows).
// L is 4 where every row's groups of four start aligned (half and the row strides multiples of
// 4, the pointers aligned; the tables' rows are half long), else 1.
template <template <int> class Kernel, class Args, class... More>
void launch_over_heads(cudaStream_t s, const Args& a, Index rows,
                       std::initializer_list<Index> row_strides,
                       std::initializer_list<const void*> floats,
                       std::initializer_list<const void*> bf16s, const More&... more) {
  bool four = a.half % 4 == 0 && quads_aligned(a.half, floats, bf16s);
  for (const Index stride : row_strides) four = four && stride % 4 == 0;
  const Index lanes = four ? a.half / 4 : a.half, heads = a.heads + 2 * a.kv_heads;
  const Index heads_per_block = lanes >= 256 ? 1 : 256 / lanes;
  const dim3 threads(static_cast<unsigned>(lanes), static_cast<unsigned>(heads_per_block));
  const dim3 blocks(static_cast<unsigned>((heads + heads_per_block - 1) / heads_per_block),
                    static_cast<unsigned>(std::clamp<Index>((a.M + rows - 1) / rows, 1, 65535)));
  if (four) {
    ZL_LAUNCH(Kernel<4>::kernel, blocks, threads, s)(a, more...);
  } else {
    ZL_LAUNCH(Kernel<1>::kernel, blocks, threads, s)(a, more...);
  }
}
template <int L>
struct UnrotateWidenKernel {
  static constexpr auto kernel = &unrotate_widen_kernel<L>;
};
template <int R>
struct RotateRoundKernels {
  template <int L>
  struct Kernel {
    static constexpr auto kernel = &rotate_round_kernel<L, R>;
  };
};

// The kernel's view of the expansions: each branch's B checked and its columns' loads chosen as
// lora.cu's.
QkvExpansionColumns expansion_columns(const RotateRound& a) {
  QkvExpansionColumns lora{};
  const Index width[3] = {a.heads * 2 * a.half, a.kv_heads * 2 * a.half, a.kv_heads * 2 * a.half};
  for (int i = 0; i < 3; ++i) {
    lora.z[i] = a.lora.z[i];
    if (a.lora.z[i])
      lora.b[i] =
          weight_columns(a.lora.b[i], 1, a.lora.rank, width[i], a.lora.rank, "rotate_round");
  }
  lora.rank = a.lora.rank;
  lora.scale = a.lora.scale;
  return lora;
}

}  // namespace

void unrotate_widen(cudaStream_t s, const UnrotateWiden& a) {
  if (a.M == 0) return;
  launch_over_heads<UnrotateWidenKernel>(s, a, 1, {a.ld, a.q_ld, a.kv_ld},
                                         {a.dst, a.cos_table, a.sin_table},
                                         {a.rounded, a.dq, a.dk, a.dv});
  check_launch("unrotate_widen", a.M, (a.heads + 2 * a.kv_heads) * 2 * a.half);
}

void rotate_round(cudaStream_t s, const RotateRound& a) {
  if (a.M == 0) return;
  const auto launch = [&](auto bound) {
    constexpr int R = decltype(bound)::value;
    // Where it adds expansions, a thread keeps B's values for kExpandingRows rows.
    launch_over_heads<RotateRoundKernels<R>::template Kernel>(
        s, a, R > 0 ? kExpandingRows : 1, {a.ld}, {a.x, a.cos_table, a.sin_table}, {a.rounded},
        expansion_columns(a));
  };
  const int rank = a.lora.rank;
  static_assert(kQkvExpansionsMaxRank == 8);
  if (rank < 0 || rank > kQkvExpansionsMaxRank)
    refuse_launch("rotate_round", "a LoRA rank outside 0..8");
  if (rank == 0)
    launch(std::integral_constant<int, 0>{});
  else
    with_rank_bound<kQkvExpansionsMaxRank>(rank, launch);
  check_launch("rotate_round", a.M, (a.heads + 2 * a.kv_heads) * 2 * a.half);
}

void rope_rotate(cudaStream_t s, float* x, const std::int32_t* positions, const float* cos_table,
                 const float* sin_table, Index half, Index M, Index row_stride, Index heads,
                 bool inverse) {
  if (M == 0) return;
  const int threads = half < 256 ? static_cast<int>((half + 31) / 32 * 32) : 256;
  ZL_LAUNCH(rope_kernel, grid_rows_cols(M, half, threads), threads, s)
  (x, positions, cos_table, sin_table, half, M, row_stride, heads, inverse ? -1.0f : 1.0f);
  check_launch("rope_rotate", M, heads * 2 * half);
}

}  // namespace zerolora::cuda
