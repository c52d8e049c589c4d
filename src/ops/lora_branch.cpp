#include "ops/lora_branch.hpp"

#include "core/cpu_dispatch.hpp"
#include "core/profiler.hpp"
#include "core/rng.hpp"
#include "ops/matmul.hpp"

namespace zerolora {

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

#define ZL_INSTANTIATE_LORA(T)                                                                   \
  template void apply_dropout<T>(Runtime&, Mat<T>, Mat<const T>, const DropoutMask&, bool);      \
  template void lora_project<T>(Runtime&, T*, Mat<const T>, const T*, Index, const DropoutMask&, \
                                Buffer<T>&);                                                     \
  template void lora_forward<T>(Runtime&, Mat<T>, T*, Mat<const T>, const T*, const T*, Index,   \
                                double, const DropoutMask&, Buffer<T>&);                         \
  template void lora_backward<T>(Runtime&, Mat<T>, T*, T*, Mat<const T>, const T*, Mat<const T>, \
                                 const T*, const T*, Index, double, const DropoutMask&,          \
                                 Buffer<T>&);
ZL_INSTANTIATE_LORA(float)
ZL_INSTANTIATE_LORA(double)
#undef ZL_INSTANTIATE_LORA

}  // namespace zerolora
