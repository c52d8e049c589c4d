// The LoRA branch of an adapted projection, forward and backward side by side:
//   forward:  z = drop(x) A^T            [M, r]   (saved for backward)
//             y += scale * z B^T          [M, out] (added onto the base projection's output)
//   backward: dB += scale * dy^T z
//             dz  = scale * dy B
//             dA += dz^T drop(x)          (the dropout mask is regenerated, not stored)
//             dx += drop'(dz A)           (the same mask, scaled by 1/(1-p))
// LoRA runs in the activation type (fp32, or fp64 in checks) even in bf16 mode: its matmuls
// are r/out of the base ones, and fp32 keeps tiny updates to B from rounding away.
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "core/buffer.hpp"
#include "core/runtime.hpp"
#include "ops/matrix.hpp"

namespace zerolora {

// Inverted dropout with a counter-based mask: element (i, j) is kept iff
// uniform(hash(key, row_keys[i]), j) >= p; kept values are scaled by 1 / (1 - p).
// key encodes (seed, step, layer, module); row_keys encode (sample, position), so masks do not
// depend on how tokens are split across micro-batches, threads or ranks.
struct DropoutMask {
  double p = 0.0;
  std::uint64_t key = 0;
  const std::uint64_t* row_keys = nullptr;  // [M]
  bool active() const { return p > 0.0; }
};

// dst (=) [M, cols] = drop(src); or, when accumulate, dst += drop(src). The mask of a row is
// generated in one vectorizable pass (AVX-512 has 64-bit multiplies).
template <class T>
void apply_dropout(Runtime& rt, Mat<T> dst, Mat<const T> src, const DropoutMask& mask,
                   bool accumulate);

// Ranks up to this run the branch as fused passes: the dropout mask made on the fly, no oneDNN
// call, and no dropped copy of the input (scratch: dz [M, r] only); larger ranks use matmuls
// and a dropped copy [M, in].
inline constexpr Index kLoraFusedMaxRank = 16;
// Whether a branch of `rank` over views with these column strides runs fused: the fused passes
// read rows as contiguous vectors.
inline bool lora_takes_fused(Index rank, std::initializer_list<Index> column_strides) {
  return rank <= kLoraFusedMaxRank &&
         std::all_of(column_strides.begin(), column_strides.end(), [](Index c) { return c == 1; });
}
// The GPU runs the backward of branches that share their input (q, k, v; gate, up) as one
// group, up to this many of rank up to kLoraGroupMaxRank (src/cuda/lora.cu: registers and shared
// memory grow with both), with their dz side by side: the memory estimate counts them.
inline constexpr Index kLoraGroupMax = 3;
inline constexpr Index kLoraGroupMaxRank = 8;

// z (=) [M, r] = drop(src) A^T: the down-projection half of the branch.
template <class T>
void lora_project(Runtime& rt, T* z /*[M, r]*/, Mat<const T> src /*[M, in]*/,
                  const T* a /*[r, in]*/, Index rank, const DropoutMask& dropout,
                  Buffer<T>& scratch);

// dst += scale z B^T: the up-projection half, z made by lora_project.
template <class T>
void lora_expand(Runtime& rt, Mat<T> dst /*[M, out] +=*/, const T* z /*[M, r]*/,
                 const T* b /*[out, r]*/, Index rank, double scale);

// lora_project, then lora_expand.
template <class T>
void lora_forward(Runtime& rt, Mat<T> dst /*[M, out] +=*/, T* z /*[M, r] =*/,
                  Mat<const T> src /*[M, in]*/, const T* a /*[r, in]*/, const T* b /*[out, r]*/,
                  Index rank, double scale, const DropoutMask& dropout, Buffer<T>& scratch);

// diff_src, diff_a, diff_b all accumulate (+=): see [Note: gradient rule].
template <class T>
void lora_backward(Runtime& rt, Mat<T> diff_src /*[M, in] +=*/, T* diff_a /*[r, in] +=*/,
                   T* diff_b /*[out, r] +=*/, Mat<const T> diff_dst /*[M, out]*/,
                   const T* z /*[M, r]*/, Mat<const T> src /*[M, in]*/, const T* a /*[r, in]*/,
                   const T* b /*[out, r]*/, Index rank, double scale, const DropoutMask& dropout,
                   Buffer<T>& scratch);

}  // namespace zerolora
