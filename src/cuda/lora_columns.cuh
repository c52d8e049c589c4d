// What the kernels that add a LoRA expansion share (lora.cu's lora_expand and
// lora_outer_expand; rope.cu's rotate_round, which adds q's, k's and v's before RoPE as it copies
// them for cuDNN): the weight's r values of a column, and the term each column receives,
// computed the same way in all of them so that they give the same bits; and the choice of the
// rank bound their register arrays are sized by.
#pragma once

#include <limits>
#include <type_traits>

#include "cuda/device_math.cuh"

namespace zerolora::cuda {

// Calls launch(bound) with the smallest rank bound, 4, 8 or 16 (a std::integral_constant), that
// holds rank, at most kMaxBound (the caller refuses ranks above it first): a kernel's registers
// grow with its bound, so that a rank of 4 does not pay for 16.
template <int kMaxBound, int kBound = 4, class Launch>
void with_rank_bound(int rank, Launch&& launch) {
  static_assert(kMaxBound == 4 || kMaxBound == 8 || kMaxBound == 16);
  if constexpr (kBound >= kMaxBound) {
    launch(std::integral_constant<int, kMaxBound>{});
  } else if (rank <= kBound) {
    launch(std::integral_constant<int, kBound>{});
  } else {
    with_rank_bound<kMaxBound, 2 * kBound>(rank, launch);
  }
}

// W's r values of column j, W(k, j) at w[k wk + j wj]. Where they are contiguous and aligned
// (B: wk 1, wj r, r a multiple of 4) a 16-byte load takes four: loaded one by one, a warp's 32
// lanes would each touch a different 16-byte piece of a 512-byte span per load, four times the
// cache traffic of the activations they multiply.
// Column indices and W's strides are 32-bit (weight_columns refuses a width that would not
// fit): fewer registers than 64-bit ones, so that more threads stay resident.
struct WeightColumns {
  const float* w;
  int wk, wj;
  bool quads;
  template <int R>
  __device__ __forceinline__ void load(float (&wv)[R], int j, int rank) const {
    if (quads) {
      const float* column = w + j * wj;
      ZL_UNROLL for (int q = 0; q < R / 4; ++q) {
        const Float4 f = 4 * q < rank ? group<const Float4>(column, q) : Float4{};
        ZL_UNROLL for (int u = 0; u < 4; ++u) wv[4 * q + u] = f.v[u];
      }
    } else {
      ZL_UNROLL for (int k = 0; k < R; ++k) wv[k] = k < rank ? w[k * wk + j * wj] : 0.0f;
    }
  }
};

inline WeightColumns weight_columns(const float* w, Index wk, Index wj, Index n, int rank,
                                    const char* kernel) {
  // The largest offset into w; the columns with a margin for a pass's last column index
  // (j0 + 3 x 256 in the expansion), which must not overflow either.
  const Index last = (rank - 1) * wk + (n - 1) * wj;
  constexpr Index kLimit = std::numeric_limits<int>::max() - 4096;
  if (n > kLimit || last > kLimit)
    refuse_launch(kernel, "a LoRA weight or row wider than 2^31 - 4096 values");
  return {w, static_cast<int>(wk), static_cast<int>(wj),
          wk == 1 && rank % 4 == 0 && wj % 4 == 0 && aligned_to(w, 16)};
}

// An expansion's term for one column, scale (z . W's column): summed in rank order, each step
// one FMA, the product by scale rounded apart; the caller adds it with __fadd_rn. Written out,
// not left to nvcc's choice of what to fuse, which could differ between the kernels.
template <int R>
__device__ __forceinline__ float expansion_term(const float (&z)[R], const float (&wv)[R], int rank,
                                                float scale) {
  float sum = 0.0f;
  ZL_UNROLL for (int k = 0; k < R; ++k) {
    if (k < rank) sum = __fmaf_rn(z[k], wv[k], sum);
  }
  return __fmul_rn(scale, sum);
}

}  // namespace zerolora::cuda
