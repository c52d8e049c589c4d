// Attention for small head dims (< 64, e.g. tiny models): no GEMM calls, K and V of one head
// transposed into a thread tile, scores of four query rows per pass with the head dim unrolled
// at compile time where it is a common size. Same contract as attention.hpp's kernels.
#include <omp.h>

#include <cmath>
#include <limits>

#include "core/cpu_dispatch.hpp"
#include "core/error.hpp"
#include "core/fast_math.hpp"
#include "ops/attention_common.hpp"

namespace zerolora::attention_detail {
namespace {

// [L, hd] rows with stride ld -> [hd, L]
template <class T>
ZL_INLINE void transpose_head(T* dst, const T* src, Index ld, Index L, Index hd) {
  for (Index j = 0; j < L; ++j)
    for (Index d = 0; d < hd; ++d) dst[d * L + j] = src[j * ld + d];
}

// Scores of query row q against keys [0, n): s_j = scale * q . k_j, then exp(s_j - row_lse)
// if row_lse is given, else the softmax numerators with their max and sum returned.
template <class T>
ZL_INLINE void score_row(T* s, const T* q, const T* kt, Index L, Index n, Index hd, T scale) {
  std::fill_n(s, n, T{0});
  for (Index d = 0; d < hd; ++d) {
    const T qd = q[d] * scale;
    const T* kd = kt + d * L;
#pragma omp simd
    for (Index j = 0; j < n; ++j) s[j] += qd * kd[j];
  }
}

// s_r[j] = scale * sum_d q_r[d] kt[d][j] for the R = 4 rows r and keys j < n (kt: [hd, L]).
// With head_dim a compile-time constant the d loop unrolls inside the vectorized j loop, so
// each score is accumulated in a register and stored once.
template <int HD, int R, class T>
ZL_INLINE void scores_fixed(T* const s[], const T* const q[], const T* kt, Index L, Index n,
                            T scale) {
  T qs[R][HD];
  for (int r = 0; r < R; ++r)
    for (int d = 0; d < HD; ++d) qs[r][d] = q[r][d] * scale;
#pragma omp simd
  for (Index j = 0; j < n; ++j) {
    T a[R] = {};
    for (int d = 0; d < HD; ++d) {
      const T k = kt[d * L + j];
      for (int r = 0; r < R; ++r) a[r] += qs[r][d] * k;
    }
    for (int r = 0; r < R; ++r) s[r][j] = a[r];
  }
}

template <class T>
ZL_INLINE void scores4(T* const s[4], const T* const q[4], const T* kt, Index L, Index n, Index hd,
                       T scale) {
  switch (hd) {
    case 8:
      return scores_fixed<8, 4>(s, q, kt, L, n, scale);
    case 16:
      return scores_fixed<16, 4>(s, q, kt, L, n, scale);
    case 32:
      return scores_fixed<32, 4>(s, q, kt, L, n, scale);
    default:
      break;
  }
  for (int r = 0; r < 4; ++r) std::fill_n(s[r], n, T{0});
  for (Index d = 0; d < hd; ++d) {
    const T* kd = kt + d * L;
    const T q0 = q[0][d] * scale, q1 = q[1][d] * scale, q2 = q[2][d] * scale, q3 = q[3][d] * scale;
    T *s0 = s[0], *s1 = s[1], *s2 = s[2], *s3 = s[3];
#pragma omp simd
    for (Index j = 0; j < n; ++j) {
      const T k = kd[j];
      s0[j] += q0 * k;
      s1[j] += q1 * k;
      s2[j] += q2 * k;
      s3[j] += q3 * k;
    }
  }
}

// out_r[d] = sum_{j < n} w_r[j] m[d][j] for the 4 rows r (m: [hd, L]).
template <class T>
ZL_INLINE void reduce4(T out[4][64], const T* const w[4], const T* m, Index L, Index n, Index hd) {
  for (Index d = 0; d < hd; ++d) {
    const T* md = m + d * L;
    const T *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
    T a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
    for (Index j = 0; j < n; ++j) {
      const T v = md[j];
      a0 += w0[j] * v;
      a1 += w1[j] * v;
      a2 += w2[j] * v;
      a3 += w3[j] * v;
    }
    out[0][d] = a0;
    out[1][d] = a1;
    out[2][d] = a2;
    out[3][d] = a3;
  }
}

// m[d][j] += sum_r w_r[j] c_r[d] for j < n (m: [hd, L]).
template <int HD, class T>
ZL_INLINE void update4_fixed(T* m, const T* const w[4], const T* const c[4], Index L, Index n) {
  T cs[4][HD];
  for (int r = 0; r < 4; ++r)
    for (int d = 0; d < HD; ++d) cs[r][d] = c[r][d];
  const T *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
#pragma omp simd
  for (Index j = 0; j < n; ++j) {
    const T x0 = w0[j], x1 = w1[j], x2 = w2[j], x3 = w3[j];
    for (int d = 0; d < HD; ++d)
      m[d * L + j] += x0 * cs[0][d] + x1 * cs[1][d] + x2 * cs[2][d] + x3 * cs[3][d];
  }
}

template <class T>
ZL_INLINE void update4(T* m, const T* const w[4], const T* const c[4], Index L, Index n, Index hd) {
  switch (hd) {
    case 8:
      return update4_fixed<8>(m, w, c, L, n);
    case 16:
      return update4_fixed<16>(m, w, c, L, n);
    default:
      break;
  }
  for (Index d = 0; d < hd; ++d) {
    T* md = m + d * L;
    const T c0 = c[0][d], c1 = c[1][d], c2 = c[2][d], c3 = c[3][d];
    const T *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3];
#pragma omp simd
    for (Index j = 0; j < n; ++j) md[j] += w0[j] * c0 + w1[j] * c1 + w2[j] * c2 + w3[j] * c3;
  }
}

}  // namespace

template <class T>
ZL_CPU_CLONES void attention_forward_direct(Runtime& rt, T* out, T* lse, const T* qkv,
                                            const std::vector<Segment>& segments, Index M,
                                            const AttentionShape& shape,
                                            const AttentionOptions& options,
                                            AttentionWorkspace& workspace) {
  constexpr Index R = 4;  // query rows per pass: each key vector loaded once serves R rows
  const Index H = shape.heads, KV = shape.kv_heads, hd = shape.head_dim, ld = shape.qkv_stride();
  const Index group = H / KV;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
  const Index longest = max_length(segments);
  const std::size_t head_bytes = aligned_bytes(static_cast<std::size_t>(hd * longest) * sizeof(T));
  const std::size_t row_bytes = aligned_bytes(static_cast<std::size_t>(longest + R) * sizeof(T));
  ensure_tiles(workspace, rt.threads(), 2 * head_bytes + R * row_bytes);
  // One task per (segment, query head), longest segments first so the threads finish together.
  const auto tasks = longest_first(segments, H);
#pragma omp parallel for num_threads(rt.threads()) schedule(dynamic, 1)
  for (Index t = 0; t < static_cast<Index>(tasks.size()); ++t) {
    const Segment& seg = segments[tasks[t].segment];
    const Index h = tasks[t].head, g = h / group, L = seg.length;
    std::byte* cursor = workspace.tiles[omp_get_thread_num()].data();
    T* kt = carve<T>(cursor, hd * longest);
    T* vt = carve<T>(cursor, hd * longest);
    T* s[R];
    for (Index r = 0; r < R; ++r) s[r] = carve<T>(cursor, longest + R);
    transpose_head(kt, qkv + seg.begin * ld + (H + g) * hd, ld, L, hd);
    transpose_head(vt, qkv + seg.begin * ld + (H + KV + g) * hd, ld, L, hd);
    for (Index i0 = 0; i0 < L; i0 += R) {
      const Index rows = std::min(R, L - i0), n = i0 + rows;  // keys seen by the last row
      const T* q[R];
      for (Index r = 0; r < R; ++r)
        q[r] = qkv + (seg.begin + i0 + std::min(r, rows - 1)) * ld + h * hd;
      scores4(s, q, kt, L, n, hd, scale);
      T inv[R];
      for (Index r = 0; r < rows; ++r) {
        const Index first = shape.first_key(i0 + r), keys = i0 + r + 1;
        T* sr = s[r];
        if (options.softmax_bf16)
          for (Index j = first; j < keys; ++j) sr[j] = round_to_bf16(sr[j]);
        T row_max = sr[first];
#pragma omp simd reduction(max : row_max)
        for (Index j = first; j < keys; ++j) row_max = std::max(row_max, sr[j]);
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (Index j = first; j < keys; ++j) {
          sr[j] = fast_exp(sr[j] - row_max);
          sum += sr[j];
        }
        for (Index j = 0; j < first; ++j) sr[j] = T{0};  // outside the sliding window
        for (Index j = keys; j < n; ++j) sr[j] = T{0};   // above the diagonal
        inv[r] = T{1} / sum;
        if (options.softmax_bf16)
          for (Index j = first; j < keys; ++j) sr[j] = round_to_bf16(sr[j] * inv[r]) / inv[r];
        lse[h * M + seg.begin + i0 + r] = row_max + std::log(sum);
      }
      for (Index r = rows; r < R; ++r) std::fill_n(s[r], n, T{0});
      T acc[R][64];
      reduce4(acc, s, vt, L, n, hd);
      for (Index r = 0; r < rows; ++r)
        for (Index d = 0; d < hd; ++d)
          out[(seg.begin + i0 + r) * H * hd + h * hd + d] = acc[r][d] * inv[r];
    }
  }
}

template <class T>
ZL_CPU_CLONES void attention_backward_direct(Runtime& rt, T* diff_qkv, const T* diff_out,
                                             const T* qkv, const T* out, const T* lse,
                                             const std::vector<Segment>& segments, Index M,
                                             const AttentionShape& shape,
                                             const AttentionOptions& options,
                                             AttentionWorkspace& workspace) {
  constexpr Index R = 4;  // query rows per pass, as in the forward
  const Index H = shape.heads, KV = shape.kv_heads, hd = shape.head_dim, ld = shape.qkv_stride();
  const Index group = H / KV;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
  const Index longest = max_length(segments);
  const std::size_t head_bytes = aligned_bytes(static_cast<std::size_t>(hd * longest) * sizeof(T));
  const std::size_t row_bytes = aligned_bytes(static_cast<std::size_t>(longest + R) * sizeof(T));
  ensure_tiles(workspace, rt.threads(), 4 * head_bytes + 2 * R * row_bytes);
  // One task per (segment, key/value head): it owns that head's dK and dV. Longest first.
  const auto tasks = longest_first(segments, KV);
#pragma omp parallel for num_threads(rt.threads()) schedule(dynamic, 1)
  for (Index t = 0; t < static_cast<Index>(tasks.size()); ++t) {
    const Segment& seg = segments[tasks[t].segment];
    const Index g = tasks[t].head, L = seg.length;
    std::byte* cursor = workspace.tiles[omp_get_thread_num()].data();
    T* kt = carve<T>(cursor, hd * longest);
    T* vt = carve<T>(cursor, hd * longest);
    T* dkt = carve<T>(cursor, hd * longest);
    T* dvt = carve<T>(cursor, hd * longest);
    T *p[R], *ds[R];
    for (Index r = 0; r < R; ++r) {
      p[r] = carve<T>(cursor, longest + R);
      ds[r] = carve<T>(cursor, longest + R);
    }
    transpose_head(kt, qkv + seg.begin * ld + (H + g) * hd, ld, L, hd);
    transpose_head(vt, qkv + seg.begin * ld + (H + KV + g) * hd, ld, L, hd);
    std::fill_n(dkt, hd * L, T{0});
    std::fill_n(dvt, hd * L, T{0});
    for (Index h = g * group; h < (g + 1) * group; ++h)
      for (Index i0 = 0; i0 < L; i0 += R) {
        const Index rows = std::min(R, L - i0), n = i0 + rows;
        const T *q[R], *d_o[R];
        T delta[R] = {}, zero_row[64] = {};
        for (Index r = 0; r < R; ++r) {
          const Index row = seg.begin + i0 + std::min(r, rows - 1);
          q[r] = qkv + row * ld + h * hd;
          // padding rows (past the segment) get a zero output gradient: they add nothing
          d_o[r] = r < rows ? diff_out + row * H * hd + h * hd : zero_row;
        }
        ZL_CHECK(hd <= 64);
        scores4(p, q, kt, L, n, hd, scale);  // the R rows' scores
        for (Index r = 0; r < R; ++r) {
          T* pr = p[r];
          if (r >= rows) {
            std::fill_n(pr, n, T{0});
            continue;
          }
          const Index first = shape.first_key(i0 + r), keys = i0 + r + 1, row = seg.begin + i0 + r;
          const T row_lse = lse[h * M + row];
          if (options.softmax_bf16) {
            for (Index j = first; j < keys; ++j)
              pr[j] = round_to_bf16(fast_exp(round_to_bf16(pr[j]) - row_lse));
          } else {
#pragma omp simd
            for (Index j = first; j < keys; ++j) pr[j] = fast_exp(pr[j] - row_lse);
          }
          for (Index j = 0; j < first; ++j) pr[j] = T{0};  // outside the sliding window
          for (Index j = keys; j < n; ++j) pr[j] = T{0};
          const T* o = out + row * H * hd + h * hd;
          for (Index d = 0; d < hd; ++d) delta[r] += d_o[r][d] * o[d];
        }
        scores4(ds, d_o, vt, L, n, hd, T{1});  // dP = dO V^T
        update4(dvt, p, d_o, L, n, hd);        // dV += P^T dO
        for (Index r = 0; r < R; ++r) {        // dS = P (dP - delta) scale
          T* g_r = ds[r];
          const T* pr = p[r];
          const T dr = delta[r];
#pragma omp simd
          for (Index j = 0; j < n; ++j) g_r[j] = pr[j] * (g_r[j] - dr) * scale;
        }
        T dq[R][64];
        reduce4(dq, ds, kt, L, n, hd);  // dQ = dS K
        update4(dkt, ds, q, L, n, hd);  // dK += dS^T Q
        for (Index r = 0; r < rows; ++r)
          for (Index d = 0; d < hd; ++d)
            diff_qkv[(seg.begin + i0 + r) * ld + h * hd + d] = dq[r][d];
      }
    T* dk = diff_qkv + seg.begin * ld + (H + g) * hd;
    T* dv = diff_qkv + seg.begin * ld + (H + KV + g) * hd;
    for (Index j = 0; j < L; ++j)
      for (Index d = 0; d < hd; ++d) {
        dk[j * ld + d] = dkt[d * L + j];
        dv[j * ld + d] = dvt[d * L + j];
      }
  }
}

#define ZL_INSTANTIATE_DIRECT(T)                                                                \
  template void attention_forward_direct<T>(                                                    \
      Runtime&, T*, T*, const T*, const std::vector<Segment>&, Index, const AttentionShape&,    \
      const AttentionOptions&, AttentionWorkspace&);                                            \
  template void attention_backward_direct<T>(                                                   \
      Runtime&, T*, const T*, const T*, const T*, const T*, const std::vector<Segment>&, Index, \
      const AttentionShape&, const AttentionOptions&, AttentionWorkspace&);
ZL_INSTANTIATE_DIRECT(float)
ZL_INSTANTIATE_DIRECT(double)
#undef ZL_INSTANTIATE_DIRECT

}  // namespace zerolora::attention_detail
