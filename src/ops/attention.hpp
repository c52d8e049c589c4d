// Causal self-attention with grouped-query heads over variable-length segments.
//
// Tokens of a micro-batch are one flat array of M rows; each Segment is an independent causal
// sequence (a padded batch row, or one document of a packed row), so no token is wasted on
// padding and attention never crosses segments.
//
// Q, K and V come from the fused projection output qkv [M, (H + 2 KV) * hd]: H query heads,
// then KV key heads, then KV value heads; query head h reads key/value head h / (H / KV).
//
// Scores are tiled by blocks of `block` query rows: a thread holds one [block, L] tile of one
// head at a time (never L x L), so L = 2048 and beyond fit. Softmax is exact per tile row
// (all keys of the row are in the tile); forward saves lse = log(sum(exp(s))) per row and head,
// and backward recomputes the probabilities from it (FlashAttention-2's recurrence).
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "core/buffer.hpp"
#include "core/runtime.hpp"
#include "ops/conventions.hpp"

namespace zerolora {

struct Segment {
  Index begin;   // first row in the flat token array
  Index length;  // rows; positions inside the segment run 0..length-1
};

// Whether the segments are the batch's M rows in order: each starting where the last ended,
// none empty, the last ending at M (what the device kernels and cuDNN's ragged offsets assume).
inline bool segments_tile_rows(const std::vector<Segment>& segments, Index M) {
  Index covered = 0;
  for (const auto& s : segments) {
    if (s.begin != covered || s.length <= 0) return false;
    covered += s.length;
  }
  return covered == M;
}

struct AttentionShape {
  Index heads;     // H
  Index kv_heads;  // KV, divides H
  Index head_dim;  // hd
  // Mistral's sliding window: the row at position i attends to positions (i - window, i];
  // 0: to all earlier positions.
  Index window = 0;
  Index qkv_stride() const { return (heads + 2 * kv_heads) * head_dim; }
  // q's, k's or v's columns (branch 0, 1 or 2) of the fused q/k/v rows: the first, and how many.
  Index qkv_first_column(int branch) const {
    return branch == 0 ? 0 : (heads + (branch - 1) * kv_heads) * head_dim;
  }
  Index qkv_width(int branch) const { return (branch == 0 ? heads : kv_heads) * head_dim; }
  // The first key position the row at `position` attends to.
  Index first_key(Index position) const {
    return window > 0 && position >= window ? position - window + 1 : 0;
  }
};

struct AttentionOptions {
  // tiled: score tiles through oneDNN GEMMs (large heads); direct: keys and values transposed
  // per head so that scores, softmax and outputs run in explicit SIMD over key positions
  // (small heads, where a GEMM call costs more than its work); auto: direct up to head_dim 64
  // (forced: up to 128).
  enum class Kernel { kAuto, kTiled, kDirect };
  Kernel kernel = Kernel::kAuto;
  Index block = 128;          // query rows per tile
  bool softmax_bf16 = false;  // round scores and probabilities to bf16 (the seed's
                              // --attn_softmax_bf16); slower on CPU, for parity studies
  // On a GPU, in the bf16 policy: cuDNN's fused attention where it takes the shape (the
  // default); false: the backend's reference kernel, which rounds where the CPU does (the
  // comparisons that tell cuDNN's own bf16 rounding apart from everything else).
  bool fused = true;
};

// Whether the CPU computes this shape with the direct kernel (fp32 throughout) rather than the
// tiled one (matmul operands in the policy's type): the GPU's reference kernel rounds as it does.
bool attention_uses_direct(const AttentionShape& shape, const AttentionOptions& options);

// The head sizes cuDNN's fused attention takes (a multiple of 8 up to 256); the GPU serves the
// others, and fp32 mode, with its reference kernel.
inline bool cudnn_supports_head_dim(Index head_dim) {
  return head_dim % 8 == 0 && head_dim >= 8 && head_dim <= 256;
}

// Scratch reused across calls (operand copies in the matmul type, per-thread tiles).
struct AttentionWorkspace {
  Buffer<std::byte> operands;
  std::vector<Buffer<std::byte>> tiles;
};

// out (=) [M, H*hd]; lse (=) [H, M]. T: activation type; Mm: matmul operand type.
template <class T, class Mm>
void attention_forward(Runtime& rt, T* out, T* lse, const T* qkv,
                       const std::vector<Segment>& segments, Index M, const AttentionShape& shape,
                       const AttentionOptions& options, AttentionWorkspace& workspace);

// diff_qkv (=) [M, (H + 2 KV) * hd], from diff_out [M, H*hd] and the forward's out and lse.
template <class T, class Mm>
void attention_backward(Runtime& rt, T* diff_qkv, const T* diff_out, const T* qkv, const T* out,
                        const T* lse, const std::vector<Segment>& segments, Index M,
                        const AttentionShape& shape, const AttentionOptions& options,
                        AttentionWorkspace& workspace);

// Generation with a KV cache: M new query rows at positions first..first+M-1 (one sequence)
// attend to cached keys/values of positions 0..first+M-1 (the new rows already appended).
// q rows have stride q_stride; keys/values are [positions, KV*hd]. out (=) [M, H*hd].
template <class T>
void attention_cached(Runtime& rt, T* out, const T* q, Index q_stride, const T* keys,
                      const T* values, Index first, Index M, const AttentionShape& shape);

}  // namespace zerolora
