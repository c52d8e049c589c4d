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

#include <cstdint>

#include "core/buffer.hpp"
#include "core/cpu_dispatch.hpp"
#include "core/rng.hpp"
#include "core/runtime.hpp"
#include "ops/matmul.hpp"

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
ZL_CPU_CLONES void apply_dropout(Runtime& rt, Mat<T> dst, Mat<const T> src, const DropoutMask& mask,
                                 bool accumulate) {
  const T keep_scale = static_cast<T>(1.0 / (1.0 - mask.p));
  // keep iff the top 24 bits of the hash, as an integer, reach p * 2^24
  const auto threshold = static_cast<std::uint64_t>(mask.p * 16777216.0);
  const Index cols = src.cols;
#pragma omp parallel for num_threads(rt.threads()) schedule(static) if (src.rows * cols > 16384)
  for (Index i = 0; i < src.rows; ++i) {
    const std::uint64_t row_key = hash_combine(mask.key, mask.row_keys[i]);
    const T* x = src.data + i * src.rs;
    T* y = dst.data + i * dst.rs;
    const Index xs = src.cs, ys = dst.cs;
#pragma omp simd
    for (Index j = 0; j < cols; ++j) {
      const bool keep = (mix64(row_key + static_cast<std::uint64_t>(j)) >> 40) >= threshold;
      const T value = keep ? x[j * xs] * keep_scale : T{0};
      if (accumulate)
        y[j * ys] += value;
      else
        y[j * ys] = value;
    }
  }
}

// z (=) [M, r] = drop(src) A^T: the down-projection half of the branch.
template <class T>
void lora_project(Runtime& rt, T* z /*[M, r]*/, Mat<const T> src /*[M, in]*/,
                  const T* a /*[r, in]*/, Index rank, const DropoutMask& dropout,
                  Buffer<T>& scratch) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kLora);
  const Index M = src.rows, in = src.cols;
  Mat<const T> x = src;
  if (dropout.active()) {
    scratch.ensure(static_cast<std::size_t>(M * in));
    apply_dropout(rt, Mat<T>::dense(scratch.data(), M, in), src, dropout, false);
    x = Mat<const T>::dense(scratch.data(), M, in);
  }
  matmul<T, T>(rt, x, Mat<const T>::dense(a, rank, in).t(), Mat<T>::dense(z, M, rank));
}

template <class T>
void lora_forward(Runtime& rt, Mat<T> dst /*[M, out] +=*/, T* z /*[M, r] =*/,
                  Mat<const T> src /*[M, in]*/, const T* a /*[r, in]*/, const T* b /*[out, r]*/,
                  Index rank, double scale, const DropoutMask& dropout, Buffer<T>& scratch) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kLora);
  lora_project(rt, z, src, a, rank, dropout, scratch);
  matmul<T, T>(rt, Mat<const T>::dense(z, src.rows, rank),
               Mat<const T>::dense(b, dst.cols, rank).t(), dst, scale, true);
}

// diff_src, diff_a, diff_b all accumulate (+=): see [Note: gradient rule].
template <class T>
void lora_backward(Runtime& rt, Mat<T> diff_src /*[M, in] +=*/, T* diff_a /*[r, in] +=*/,
                   T* diff_b /*[out, r] +=*/, Mat<const T> diff_dst /*[M, out]*/,
                   const T* z /*[M, r]*/, Mat<const T> src /*[M, in]*/, const T* a /*[r, in]*/,
                   const T* b /*[out, r]*/, Index rank, double scale, const DropoutMask& dropout,
                   Buffer<T>& scratch) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kLora);
  const Index M = src.rows, in = src.cols, out = diff_dst.cols;
  const double s = scale;
  scratch.ensure(static_cast<std::size_t>(M * rank + M * in));
  T* dz = scratch.data();               // [M, r]
  T* work = scratch.data() + M * rank;  // [M, in]
  const auto z_mat = Mat<const T>::dense(z, M, rank);
  const auto dz_mat = Mat<T>::dense(dz, M, rank);
  const auto a_mat = Mat<const T>::dense(a, rank, in);

  matmul<T, T>(rt, diff_dst.t(), z_mat, Mat<T>::dense(diff_b, out, rank), s, true);
  matmul<T, T>(rt, diff_dst, Mat<const T>::dense(b, out, rank), dz_mat, s);

  Mat<const T> x = src;
  if (dropout.active()) {
    apply_dropout(rt, Mat<T>::dense(work, M, in), src, dropout, false);
    x = Mat<const T>::dense(work, M, in);
  }
  matmul<T, T>(rt, dz_mat.as_const().t(), x, Mat<T>::dense(diff_a, rank, in), 1.0f, true);

  if (!dropout.active()) {
    matmul<T, T>(rt, dz_mat, a_mat, diff_src, 1.0f, true);
  } else {
    matmul<T, T>(rt, dz_mat, a_mat, Mat<T>::dense(work, M, in));
    apply_dropout(rt, diff_src, Mat<const T>::dense(work, M, in), dropout, true);
  }
}

}  // namespace zerolora
