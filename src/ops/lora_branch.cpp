#include "ops/lora_branch.hpp"

#include <algorithm>
#include <initializer_list>
#include <vector>

#include "core/cpu_dispatch.hpp"
#include "core/profiler.hpp"
#include "core/rng.hpp"
#include "ops/matmul.hpp"
#include "ops/simd.hpp"

#pragma GCC diagnostic ignored "-Wpsabi"  // simd.hpp: vectors are never passed out of line

namespace zerolora {

// The mask of a row: element j is kept iff the top 24 bits of hash(row_key + j), as an
// integer, reach p * 2^24 (one vectorizable pass: AVX-512 has 64-bit multiplies).
struct KeepRule {
  explicit KeepRule(const DropoutMask& mask)
      : active(mask.active()),
        threshold(static_cast<std::uint64_t>(mask.p * 16777216.0)),
        keep_scale(active ? 1.0 / (1.0 - mask.p) : 1.0),
        key(mask.key),
        row_keys(mask.row_keys) {}
  std::uint64_t row_key(Index i) const { return hash_combine(key, row_keys[i]); }
  bool active;
  std::uint64_t threshold;
  double keep_scale;
  std::uint64_t key;
  const std::uint64_t* row_keys;
};

ZL_INLINE bool kept(std::uint64_t row_key, Index j, std::uint64_t threshold) {
  return (mix64(row_key + static_cast<std::uint64_t>(j)) >> 40) >= threshold;
}

template <class T>
ZL_CPU_CLONES void apply_dropout(Runtime& rt, Mat<T> dst, Mat<const T> src, const DropoutMask& mask,
                                 bool accumulate) {
  const KeepRule rule(mask);
  const T keep_scale = static_cast<T>(rule.keep_scale);
  const std::uint64_t threshold = rule.threshold;
  const Index cols = src.cols;
#pragma omp parallel for num_threads(rt.threads()) schedule(static) if (src.rows * cols > 16384)
  for (Index i = 0; i < src.rows; ++i) {
    const std::uint64_t row_key = rule.row_key(i);
    const T* x = src.data + i * src.rs;
    T* y = dst.data + i * dst.rs;
    const Index xs = src.cs, ys = dst.cs;
#pragma omp simd
    for (Index j = 0; j < cols; ++j) {
      const T value = kept(row_key, j, threshold) ? x[j * xs] * keep_scale : T{0};
      if (accumulate)
        y[j * ys] += value;
      else
        y[j * ys] = value;
    }
  }
}

// Small ranks (kLoraFusedMaxRank): the branch in passes over the activations, the dropout mask
// made on the fly, no oneDNN call. A oneDNN call's fixed cost (microseconds) rivals a rank-4
// product's work on a small model, and the dropped copy of x (M x in) is never written. Every
// result is a sum in a fixed order (rows in sequence for the reductions over M, which run over
// column blocks), so it does not depend on the number of threads.

// drop(x[i, j0 : j0 + n]) into out (a copy of x when the mask is off).
template <class T>
ZL_INLINE void dropped_row(const KeepRule& rule, Index i, const T* x, Index j0, Index n, T* out) {
  if (!rule.active) {
    std::copy(x + j0, x + j0 + n, out);
    return;
  }
  const std::uint64_t row_key = rule.row_key(i);
  const T keep_scale = static_cast<T>(rule.keep_scale);
  const std::uint64_t threshold = rule.threshold;
#pragma omp simd
  for (Index j = 0; j < n; ++j) {
    out[j] = kept(row_key, j0 + j, threshold) ? x[j0 + j] * keep_scale : T{0};
  }
}

// Column blocks for the reductions over rows: about four per thread, 16 to 256 wide.
inline Index column_block(Runtime& rt, Index cols) {
  const Index per = (cols + 4 * rt.threads() - 1) / (4 * rt.threads());
  return std::clamp<Index>((per + 15) / 16 * 16, 16, 256);
}

// rows_times_small's G = lanes / R rows at `rows` (each `padded` long, zero-padded), against
// w (R rows of `padded`): the group's lanes dot products accumulate in one vector each
// (lane-wise, along the row) and leave in one transpose_sum, in out's row-major order [G, R];
// the first `count` rows are written. Summing each dot product across its lanes on its own
// cost more than the products (a scalar add per lane).
template <int R, class T>
ZL_INLINE void group_times_small(const T* rows, const T* w, Index padded, Index count, T* out,
                                 T s) {
  constexpr int lanes = simd::kLanes<T>, G = lanes / R;
  using V = simd::Vec<T>;
  V acc[lanes];
  for (int l = 0; l < lanes; ++l) acc[l] = simd::splat(T{0});
  for (Index c = 0; c < padded; c += lanes) {
    V wv[R];
    for (int k = 0; k < R; ++k) wv[k] = simd::load(w + k * padded + c);
    for (int g = 0; g < G; ++g) {
      const V xv = simd::load(rows + g * padded + c);
      for (int k = 0; k < R; ++k) acc[g * R + k] += xv * wv[k];
    }
  }
  const V sums = simd::transpose_sum<T>(acc) * simd::splat(s);
  for (Index l = 0; l < count * R; ++l) out[l] = sums[l];
}

// out[i, k] = scale * sum_j x[i, j] w[k, j] (+= when accumulate): rows of x against the r rows
// of w; x is dropped first when `rule` is active. With AVX-512 (the only ISA this was timed on:
// 16 vector accumulators fit its 32 registers, not AVX2's 16), ranks up to half a vector's
// lanes that divide them, written (not accumulated) into a dense out, take rows in groups
// (group_times_small); others one row at a time.
template <class T>
ZL_CPU_CLONES void rows_times_small(Runtime& rt, T* out, Index out_rs, Mat<const T> x,
                                    const T* w /*[r, cols]*/, Index rank, const KeepRule& rule,
                                    double scale, bool accumulate) {
  const Index M = x.rows, n = x.cols;
  const T s = static_cast<T>(scale);
  constexpr int lanes = simd::kLanes<T>;
  if (out_rs == rank && !accumulate && rank <= lanes / 2 && lanes % rank == 0 &&
      __builtin_cpu_supports("avx512f")) {
    const Index group = lanes / rank, groups = (M + group - 1) / group;
    const Index padded = (n + lanes - 1) / lanes * lanes;
    std::vector<T> w_padded(static_cast<std::size_t>(rank * padded), T{0});
    for (Index k = 0; k < rank; ++k)
      std::copy(w + k * n, w + (k + 1) * n, w_padded.data() + k * padded);
#pragma omp parallel num_threads(rt.threads()) if (M * n * rank > 32768)
    {
      std::vector<T> rows(static_cast<std::size_t>(group * padded), T{0});  // tails stay zero
#pragma omp for schedule(static)
      for (Index g0 = 0; g0 < groups; ++g0) {
        const Index i0 = g0 * group, count = std::min(group, M - i0);
        for (Index g = 0; g < group; ++g) {
          T* row = rows.data() + g * padded;
          if (g < count)
            dropped_row(rule, i0 + g, x.data + (i0 + g) * x.rs, 0, n, row);
          else
            std::fill(row, row + n, T{0});
        }
        T* o = out + i0 * rank;
        switch (rank) {
          case 1:
            group_times_small<1>(rows.data(), w_padded.data(), padded, count, o, s);
            break;
          case 2:
            group_times_small<2>(rows.data(), w_padded.data(), padded, count, o, s);
            break;
          case 4:
            group_times_small<4>(rows.data(), w_padded.data(), padded, count, o, s);
            break;
          default:  // 8 (floats only: lanes / 2)
            group_times_small<lanes / 2>(rows.data(), w_padded.data(), padded, count, o, s);
        }
      }
    }
    return;
  }
#pragma omp parallel num_threads(rt.threads()) if (M * n * rank > 32768)
  {
    std::vector<T> row(static_cast<std::size_t>(rule.active ? n : 0));
#pragma omp for schedule(static)
    for (Index i = 0; i < M; ++i) {
      const T* v = x.data + i * x.rs;
      if (rule.active) {
        dropped_row(rule, i, v, 0, n, row.data());
        v = row.data();
      }
      T* o = out + i * out_rs;
      for (Index k = 0; k < rank; ++k) {
        const T* wk = w + k * n;
        T dot = 0;
#pragma omp simd reduction(+ : dot)
        for (Index j = 0; j < n; ++j) dot += v[j] * wk[j];
        o[k] = accumulate ? o[k] + s * dot : s * dot;
      }
    }
  }
}

// dst[i, :] += scale * sum_k z[i, k] wt[k, :], then (drop) when `rule` is active: the
// expansion from rank r back to a row, wt as [r, cols].
template <class T>
ZL_CPU_CLONES void small_times_rows(Runtime& rt, Mat<T> dst, const T* z /*[M, r]*/,
                                    const T* wt /*[r, cols]*/, Index rank, const KeepRule& rule,
                                    double scale) {
  const Index M = dst.rows, n = dst.cols;
  const T s = static_cast<T>(scale);
  const T keep_scale = static_cast<T>(rule.keep_scale);
#pragma omp parallel num_threads(rt.threads()) if (M * n * rank > 32768)
  {
    std::vector<T> acc(static_cast<std::size_t>(n));
#pragma omp for schedule(static)
    for (Index i = 0; i < M; ++i) {
      std::fill(acc.begin(), acc.end(), T{0});
      const T* zi = z + i * rank;
      for (Index k = 0; k < rank; ++k) {
        const T zik = zi[k];
        const T* wk = wt + k * n;
#pragma omp simd
        for (Index j = 0; j < n; ++j) acc[j] += zik * wk[j];
      }
      T* d = dst.data + i * dst.rs;
      if (!rule.active) {
#pragma omp simd
        for (Index j = 0; j < n; ++j) d[j] += s * acc[j];
      } else {
        const std::uint64_t row_key = rule.row_key(i);
        const std::uint64_t threshold = rule.threshold;
#pragma omp simd
        for (Index j = 0; j < n; ++j) {
          d[j] += kept(row_key, j, threshold) ? s * acc[j] * keep_scale : T{0};
        }
      }
    }
  }
}

// g[k, j] += sum_i z[i, k] drop(x)[i, j]: the reduction over rows for dA (x the input) and dB
// (x = dy, no mask; g = dB^T, written transposed into dB [cols, r]). Column blocks run in
// parallel, rows in sequence within each.
template <class T>
ZL_CPU_CLONES void rows_reduced_small(Runtime& rt, T* g, bool g_transposed, Mat<const T> x,
                                      const T* z /*[M, r]*/, Index rank, const KeepRule& rule,
                                      double scale) {
  const Index M = x.rows, n = x.cols;
  const Index width = column_block(rt, n);
  const Index blocks = (n + width - 1) / width;
  const T s = static_cast<T>(scale);
#pragma omp parallel num_threads(rt.threads()) if (M * n * rank > 32768 && blocks > 1)
  {
    std::vector<T> acc(static_cast<std::size_t>(rank * width)),
        row(static_cast<std::size_t>(width));
#pragma omp for schedule(static)
    for (Index block = 0; block < blocks; ++block) {
      const Index j0 = block * width, cols = std::min(width, n - j0);
      std::fill(acc.begin(), acc.end(), T{0});
      for (Index i = 0; i < M; ++i) {
        dropped_row(rule, i, x.data + i * x.rs, j0, cols, row.data());
        const T* zi = z + i * rank;
        for (Index k = 0; k < rank; ++k) {
          const T zik = zi[k];
          T* ak = acc.data() + k * width;
#pragma omp simd
          for (Index j = 0; j < cols; ++j) ak[j] += zik * row[j];
        }
      }
      for (Index k = 0; k < rank; ++k)
        for (Index j = 0; j < cols; ++j) {
          T& target = g_transposed ? g[(j0 + j) * rank + k] : g[k * n + j0 + j];
          target += s * acc[k * width + j];
        }
    }
  }
}

template <class T>
std::vector<T> transposed(const T* w /*[rows, cols]*/, Index rows, Index cols) {
  std::vector<T> t(static_cast<std::size_t>(rows * cols));
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) t[j * rows + i] = w[i * cols + j];
  return t;
}

template <class T>
void lora_project(Runtime& rt, T* z /*[M, r]*/, Mat<const T> src /*[M, in]*/,
                  const T* a /*[r, in]*/, Index rank, const DropoutMask& dropout,
                  Buffer<T>& scratch) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kLora);
  const Index M = src.rows, in = src.cols;
  if (lora_takes_fused(rank, {src.cs})) {
    rows_times_small(rt, z, rank, src, a, rank, KeepRule(dropout), 1.0, false);
    return;
  }
  Mat<const T> x = src;
  if (dropout.active()) {
    scratch.ensure(static_cast<std::size_t>(M * in));
    apply_dropout(rt, Mat<T>::dense(scratch.data(), M, in), src, dropout, false);
    x = Mat<const T>::dense(scratch.data(), M, in);
  }
  matmul<T, T>(rt, x, Mat<const T>::dense(a, rank, in).t(), Mat<T>::dense(z, M, rank));
}

template <class T>
void lora_expand(Runtime& rt, Mat<T> dst /*[M, out] +=*/, const T* z /*[M, r]*/,
                 const T* b /*[out, r]*/, Index rank, double scale) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kLora);
  if (lora_takes_fused(rank, {dst.cs})) {
    small_times_rows(rt, dst, z, transposed(b, dst.cols, rank).data(), rank,
                     KeepRule(DropoutMask{}), scale);
    return;
  }
  matmul<T, T>(rt, Mat<const T>::dense(z, dst.rows, rank),
               Mat<const T>::dense(b, dst.cols, rank).t(), dst, scale, true);
}

template <class T>
void lora_forward(Runtime& rt, Mat<T> dst /*[M, out] +=*/, T* z /*[M, r] =*/,
                  Mat<const T> src /*[M, in]*/, const T* a /*[r, in]*/, const T* b /*[out, r]*/,
                  Index rank, double scale, const DropoutMask& dropout, Buffer<T>& scratch) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kLora);
  lora_project(rt, z, src, a, rank, dropout, scratch);
  lora_expand(rt, dst, static_cast<const T*>(z), b, rank, scale);
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
  if (lora_takes_fused(rank, {diff_src.cs, diff_dst.cs, src.cs})) {
    const KeepRule keep(dropout), all(DropoutMask{});
    scratch.ensure(static_cast<std::size_t>(M * rank));
    T* dz = scratch.data();                                           // [M, r]
    rows_reduced_small(rt, diff_b, true, diff_dst, z, rank, all, s);  // dB += s dy^T z
    rows_times_small(rt, dz, rank, diff_dst, transposed(b, out, rank).data(), rank, all, s,
                     false);                                          // dz = s dy B
    rows_reduced_small(rt, diff_a, false, src, dz, rank, keep, 1.0);  // dA += dz^T drop(x)
    small_times_rows(rt, diff_src, dz, a, rank, keep, 1.0);           // dx += drop(dz A)
    return;
  }
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
  template void lora_expand<T>(Runtime&, Mat<T>, const T*, const T*, Index, double);             \
  template void lora_forward<T>(Runtime&, Mat<T>, T*, Mat<const T>, const T*, const T*, Index,   \
                                double, const DropoutMask&, Buffer<T>&);                         \
  template void lora_backward<T>(Runtime&, Mat<T>, T*, T*, Mat<const T>, const T*, Mat<const T>, \
                                 const T*, const T*, Index, double, const DropoutMask&,          \
                                 Buffer<T>&);
ZL_INSTANTIATE_LORA(float)
ZL_INSTANTIATE_LORA(double)
#undef ZL_INSTANTIATE_LORA

}  // namespace zerolora
