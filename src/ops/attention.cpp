#include "ops/attention.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/bf16.hpp"
#include "core/error.hpp"
#include "core/fast_math.hpp"
#include "ops/convert.hpp"
#include "ops/matmul.hpp"

namespace zerolora {
namespace {

template <class T>
T round_to_bf16(T x) {
  return static_cast<T>(to_float(to_bf16(static_cast<float>(x))));
}

Index max_length(const std::vector<Segment>& segments) {
  Index longest = 0;
  for (const auto& seg : segments) longest = std::max(longest, seg.length);
  return longest;
}

// Operands for the matmuls: the activations themselves when types agree, else a copy in Mm
// placed at `offset_bytes` of the workspace.
template <class Mm, class T>
const Mm* as_operand(Runtime& rt, const T* src, Index n, Buffer<std::byte>& storage,
                     std::size_t offset_bytes) {
  if constexpr (std::is_same_v<Mm, T>) {
    return src;
  } else {
    Mm* dst = reinterpret_cast<Mm*>(storage.data() + offset_bytes);
    convert(rt, dst, src, n);
    return dst;
  }
}

template <class U>
U* carve(std::byte*& cursor, Index count) {
  U* p = reinterpret_cast<U*>(cursor);
  cursor += (static_cast<std::size_t>(count) * sizeof(U) + 63) / 64 * 64;
  return p;
}

std::size_t aligned_bytes(std::size_t bytes) {
  return (bytes + 63) / 64 * 64;
}

void ensure_tiles(AttentionWorkspace& workspace, int threads, std::size_t bytes) {
  if (workspace.tiles.size() < static_cast<std::size_t>(threads))
    workspace.tiles.resize(static_cast<std::size_t>(threads));
  for (auto& tile : workspace.tiles) tile.ensure(bytes);
}

struct QueryBlock {
  Index segment;
  Index head;  // query head (forward) or key/value head (backward)
  Index q0;
};

}  // namespace

// (segment, head) pairs, longest segments first: the costliest tasks start first, so dynamic
// scheduling leaves no thread idle at the end (attention costs L^2 per segment).
std::vector<QueryBlock> longest_first(const std::vector<Segment>& segments, Index heads) {
  std::vector<QueryBlock> tasks;
  for (Index s = 0; s < static_cast<Index>(segments.size()); ++s)
    for (Index h = 0; h < heads; ++h) tasks.push_back({s, h, 0});
  std::stable_sort(tasks.begin(), tasks.end(), [&](const QueryBlock& a, const QueryBlock& b) {
    return segments[a.segment].length > segments[b.segment].length;
  });
  return tasks;
}

bool use_direct(const AttentionShape& shape, const AttentionOptions& options) {
  if (options.kernel == AttentionOptions::Kernel::kAuto) return shape.head_dim < 64;
  ZL_CHECK(options.kernel != AttentionOptions::Kernel::kDirect || shape.head_dim <= 64);
  return options.kernel == AttentionOptions::Kernel::kDirect;
}

// [L, hd] rows with stride ld -> [hd, L]
template <class T>
void transpose_head(T* dst, const T* src, Index ld, Index L, Index hd) {
  for (Index j = 0; j < L; ++j)
    for (Index d = 0; d < hd; ++d) dst[d * L + j] = src[j * ld + d];
}

// Scores of query row q against keys [0, n): s_j = scale * q . k_j, then exp(s_j - row_lse)
// if row_lse is given, else the softmax numerators with their max and sum returned.
template <class T>
void score_row(T* s, const T* q, const T* kt, Index L, Index n, Index hd, T scale) {
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
void scores_fixed(T* const s[], const T* const q[], const T* kt, Index L, Index n, T scale) {
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
void scores4(T* const s[4], const T* const q[4], const T* kt, Index L, Index n, Index hd, T scale) {
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
void reduce4(T out[4][64], const T* const w[4], const T* m, Index L, Index n, Index hd) {
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
void update4_fixed(T* m, const T* const w[4], const T* const c[4], Index L, Index n) {
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
void update4(T* m, const T* const w[4], const T* const c[4], Index L, Index n, Index hd) {
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

template <class T>
void attention_forward_direct(Runtime& rt, T* out, T* lse, const T* qkv,
                              const std::vector<Segment>& segments, Index M,
                              const AttentionShape& shape, const AttentionOptions& options,
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
        const Index keys = i0 + r + 1;
        T* sr = s[r];
        if (options.softmax_bf16)
          for (Index j = 0; j < keys; ++j) sr[j] = round_to_bf16(sr[j]);
        T row_max = sr[0];
#pragma omp simd reduction(max : row_max)
        for (Index j = 0; j < keys; ++j) row_max = std::max(row_max, sr[j]);
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (Index j = 0; j < keys; ++j) {
          sr[j] = fast_exp(sr[j] - row_max);
          sum += sr[j];
        }
        for (Index j = keys; j < n; ++j) sr[j] = T{0};  // above the diagonal
        inv[r] = T{1} / sum;
        if (options.softmax_bf16)
          for (Index j = 0; j < keys; ++j) sr[j] = round_to_bf16(sr[j] * inv[r]) / inv[r];
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
void attention_backward_direct(Runtime& rt, T* diff_qkv, const T* diff_out, const T* qkv,
                               const T* out, const T* lse, const std::vector<Segment>& segments,
                               Index M, const AttentionShape& shape,
                               const AttentionOptions& options, AttentionWorkspace& workspace) {
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
          const Index keys = i0 + r + 1, row = seg.begin + i0 + r;
          const T row_lse = lse[h * M + row];
          if (options.softmax_bf16) {
            for (Index j = 0; j < keys; ++j)
              pr[j] = round_to_bf16(fast_exp(round_to_bf16(pr[j]) - row_lse));
          } else {
#pragma omp simd
            for (Index j = 0; j < keys; ++j) pr[j] = fast_exp(pr[j] - row_lse);
          }
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

template <class T, class Mm>
void attention_forward(Runtime& rt, T* out, T* lse, const T* qkv,
                       const std::vector<Segment>& segments, Index M, const AttentionShape& shape,
                       const AttentionOptions& options, AttentionWorkspace& workspace) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kAttention);
  if (use_direct(shape, options))
    return attention_forward_direct(rt, out, lse, qkv, segments, M, shape, options, workspace);
  const Index H = shape.heads, KV = shape.kv_heads, hd = shape.head_dim;
  const Index ld = shape.qkv_stride(), group = H / KV, block = options.block;
  ZL_CHECK(H % KV == 0 && block > 0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));

  if constexpr (!std::is_same_v<Mm, T>)
    workspace.operands.ensure(static_cast<std::size_t>(M * ld) * sizeof(Mm));
  const Mm* qkv_mm = as_operand<Mm>(rt, qkv, M * ld, workspace.operands, 0);

  const Index longest = max_length(segments);
  const std::size_t tile_bytes =
      aligned_bytes(block * longest * sizeof(T)) + aligned_bytes(block * longest * sizeof(Mm));
  ensure_tiles(workspace, rt.threads(), tile_bytes);

  std::vector<QueryBlock> tasks;
  for (Index s = 0; s < static_cast<Index>(segments.size()); ++s)
    for (Index h = 0; h < H; ++h)
      for (Index q0 = 0; q0 < segments[s].length; q0 += block) tasks.push_back({s, h, q0});

#pragma omp parallel for num_threads(rt.threads()) schedule(dynamic, 1)
  for (Index t = 0; t < static_cast<Index>(tasks.size()); ++t) {
    const auto [s, h, q0] = tasks[t];
    const Segment& seg = segments[s];
    const Index g = h / group;
    const Index bq = std::min(block, seg.length - q0);
    const Index kend = q0 + bq;  // causal: the tile's last row sees keys [0, kend)

    std::byte* cursor = workspace.tiles[omp_get_thread_num()].data();
    T* scores = carve<T>(cursor, bq * kend);  // [bq, kend]
    Mm* probs = nullptr;                      // [bq, kend]
    if constexpr (std::is_same_v<Mm, T>)
      probs = scores;
    else
      probs = carve<Mm>(cursor, bq * kend);

    const Mat<const Mm> q{qkv_mm + (seg.begin + q0) * ld + h * hd, bq, hd, ld, 1};
    const Mat<const Mm> k{qkv_mm + seg.begin * ld + (H + g) * hd, kend, hd, ld, 1};
    const Mat<const Mm> v{qkv_mm + seg.begin * ld + (H + KV + g) * hd, kend, hd, ld, 1};
    matmul<Mm, T>(rt, q, k.t(), Mat<T>::dense(scores, bq, kend), scale);

    for (Index r = 0; r < bq; ++r) {
      const Index limit = q0 + r + 1;
      T* srow = scores + r * kend;
      if (options.softmax_bf16)
        for (Index j = 0; j < limit; ++j) srow[j] = round_to_bf16(srow[j]);
      T row_max = -std::numeric_limits<T>::infinity();
      for (Index j = 0; j < limit; ++j) row_max = std::max(row_max, srow[j]);
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (Index j = 0; j < limit; ++j) {
        srow[j] = fast_exp(srow[j] - row_max);
        sum += srow[j];
      }
      const T inv_sum = T{1} / sum;
      Mm* prow = probs + r * kend;
      for (Index j = 0; j < limit; ++j) {
        const T p = srow[j] * inv_sum;
        prow[j] = convert_to<Mm>(options.softmax_bf16 ? round_to_bf16(p) : p);
      }
      for (Index j = limit; j < kend; ++j) prow[j] = convert_to<Mm>(0.0f);
      lse[h * M + seg.begin + q0 + r] = row_max + std::log(sum);
    }
    Mat<T> o{out + (seg.begin + q0) * H * hd + h * hd, bq, hd, H * hd, 1};
    matmul<Mm, T>(rt, Mat<const Mm>::dense(probs, bq, kend), v, o);
  }
}

template <class T, class Mm>
void attention_backward(Runtime& rt, T* diff_qkv, const T* diff_out, const T* qkv, const T* out,
                        const T* lse, const std::vector<Segment>& segments, Index M,
                        const AttentionShape& shape, const AttentionOptions& options,
                        AttentionWorkspace& workspace) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kAttention);
  if (use_direct(shape, options))
    return attention_backward_direct(rt, diff_qkv, diff_out, qkv, out, lse, segments, M, shape,
                                     options, workspace);
  const Index H = shape.heads, KV = shape.kv_heads, hd = shape.head_dim;
  const Index ld = shape.qkv_stride(), group = H / KV, block = options.block;
  ZL_CHECK(H % KV == 0 && block > 0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));

  const std::size_t qkv_bytes = aligned_bytes(static_cast<std::size_t>(M * ld) * sizeof(Mm));
  if constexpr (!std::is_same_v<Mm, T>)
    workspace.operands.ensure(qkv_bytes + static_cast<std::size_t>(M * H * hd) * sizeof(Mm));
  const Mm* qkv_mm = as_operand<Mm>(rt, qkv, M * ld, workspace.operands, 0);
  const Mm* dout_mm = as_operand<Mm>(rt, diff_out, M * H * hd, workspace.operands, qkv_bytes);

  const Index longest = max_length(segments);
  const std::size_t tile_bytes = 2 * aligned_bytes(block * longest * sizeof(T)) +
                                 2 * aligned_bytes(block * longest * sizeof(Mm)) +
                                 aligned_bytes(block * sizeof(T));
  ensure_tiles(workspace, rt.threads(), tile_bytes);

  // One task per (segment, key/value head): it owns that head's dK and dV rows.
  std::vector<QueryBlock> tasks;
  for (Index s = 0; s < static_cast<Index>(segments.size()); ++s)
    for (Index g = 0; g < KV; ++g) tasks.push_back({s, g, 0});

#pragma omp parallel for num_threads(rt.threads()) schedule(dynamic, 1)
  for (Index t = 0; t < static_cast<Index>(tasks.size()); ++t) {
    const Segment& seg = segments[tasks[t].segment];
    const Index g = tasks[t].head;
    T* dk_all = diff_qkv + seg.begin * ld + (H + g) * hd;
    T* dv_all = diff_qkv + seg.begin * ld + (H + KV + g) * hd;
    for (Index i = 0; i < seg.length; ++i) {
      std::fill_n(dk_all + i * ld, hd, T{0});
      std::fill_n(dv_all + i * ld, hd, T{0});
    }
    std::byte* cursor = workspace.tiles[omp_get_thread_num()].data();
    T* probs = carve<T>(cursor, block * longest);
    T* dprobs = carve<T>(cursor, block * longest);
    Mm* probs_mm = nullptr;
    Mm* dscores_mm = nullptr;
    if constexpr (std::is_same_v<Mm, T>) {
      probs_mm = probs;
      dscores_mm = dprobs;
    } else {
      probs_mm = carve<Mm>(cursor, block * longest);
      dscores_mm = carve<Mm>(cursor, block * longest);
    }
    T* delta = carve<T>(cursor, block);

    for (Index h = g * group; h < (g + 1) * group; ++h) {
      for (Index q0 = 0; q0 < seg.length; q0 += block) {
        const Index bq = std::min(block, seg.length - q0);
        const Index kend = q0 + bq;
        const Index row0 = seg.begin + q0;
        const Mat<const Mm> q{qkv_mm + row0 * ld + h * hd, bq, hd, ld, 1};
        const Mat<const Mm> k{qkv_mm + seg.begin * ld + (H + g) * hd, kend, hd, ld, 1};
        const Mat<const Mm> v{qkv_mm + seg.begin * ld + (H + KV + g) * hd, kend, hd, ld, 1};
        const Mat<const Mm> dout{dout_mm + row0 * H * hd + h * hd, bq, hd, H * hd, 1};

        // delta_r = dO_r . O_r = sum_j P_rj dP_rj
        for (Index r = 0; r < bq; ++r) {
          const T* o_row = out + (row0 + r) * H * hd + h * hd;
          const T* do_row = diff_out + (row0 + r) * H * hd + h * hd;
          T dot = 0;
          for (Index d = 0; d < hd; ++d) dot += o_row[d] * do_row[d];
          delta[r] = dot;
        }
        // P = exp(scale * Q K^T - lse), zero above the diagonal
        matmul<Mm, T>(rt, q, k.t(), Mat<T>::dense(probs, bq, kend), scale);
        for (Index r = 0; r < bq; ++r) {
          const Index limit = q0 + r + 1;
          const T row_lse = lse[h * M + row0 + r];
          T* prow = probs + r * kend;
          for (Index j = 0; j < limit; ++j) {
            const T s = options.softmax_bf16 ? round_to_bf16(prow[j]) : prow[j];
            const T p = fast_exp(s - row_lse);
            prow[j] = options.softmax_bf16 ? round_to_bf16(p) : p;
          }
          for (Index j = limit; j < kend; ++j) prow[j] = T{0};
        }
        if constexpr (!std::is_same_v<Mm, T>) convert(rt, probs_mm, probs, bq * kend);
        const Mat<const Mm> p_mm = Mat<const Mm>::dense(probs_mm, bq, kend);
        // dV += P^T dO
        matmul<Mm, T>(rt, p_mm.t(), dout, Mat<T>{dv_all, kend, hd, ld, 1}, 1.0f, true);
        // dP = dO V^T;  dS = P * (dP - delta)
        matmul<Mm, T>(rt, dout, v.t(), Mat<T>::dense(dprobs, bq, kend));
        for (Index r = 0; r < bq; ++r) {
          const T* prow = probs + r * kend;
          const T* dprow = dprobs + r * kend;
          Mm* dsrow = dscores_mm + r * kend;
          for (Index j = 0; j < kend; ++j)
            dsrow[j] = convert_to<Mm>(prow[j] * (dprow[j] - delta[r]));
        }
        const Mat<const Mm> ds = Mat<const Mm>::dense(dscores_mm, bq, kend);
        // dQ = scale * dS K;  dK += scale * dS^T Q
        matmul<Mm, T>(rt, ds, k, Mat<T>{diff_qkv + row0 * ld + h * hd, bq, hd, ld, 1}, scale);
        matmul<Mm, T>(rt, ds.t(), q, Mat<T>{dk_all, kend, hd, ld, 1}, scale, true);
      }
    }
  }
}

template <class T>
void attention_cached(Runtime& rt, T* out, const T* q, Index q_stride, const T* keys,
                      const T* values, Index first, Index M, const AttentionShape& shape) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kAttention);
  const Index H = shape.heads, KV = shape.kv_heads, hd = shape.head_dim, kv_stride = KV * hd;
  const Index group = H / KV;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)));
#pragma omp parallel num_threads(rt.threads())
  {
    std::vector<T> scores(static_cast<std::size_t>(first + M));
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (Index i = 0; i < M; ++i)
      for (Index h = 0; h < H; ++h) {
        const Index g = h / group, keys_seen = first + i + 1;
        const T* qi = q + i * q_stride + h * hd;
        T row_max = -std::numeric_limits<T>::infinity();
        for (Index j = 0; j < keys_seen; ++j) {
          const T* kj = keys + j * kv_stride + g * hd;
          T dot = 0;
#pragma omp simd reduction(+ : dot)
          for (Index d = 0; d < hd; ++d) dot += qi[d] * kj[d];
          scores[j] = dot * scale;
          row_max = std::max(row_max, scores[j]);
        }
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (Index j = 0; j < keys_seen; ++j) {
          scores[j] = fast_exp(scores[j] - row_max);
          sum += scores[j];
        }
        T* o = out + i * H * hd + h * hd;
        std::fill_n(o, hd, T{0});
        for (Index j = 0; j < keys_seen; ++j) {
          const T p = scores[j] / sum;
          const T* vj = values + j * kv_stride + g * hd;
#pragma omp simd
          for (Index d = 0; d < hd; ++d) o[d] += p * vj[d];
        }
      }
  }
}

template void attention_cached<float>(Runtime&, float*, const float*, Index, const float*,
                                      const float*, Index, Index, const AttentionShape&);
template void attention_cached<double>(Runtime&, double*, const double*, Index, const double*,
                                       const double*, Index, Index, const AttentionShape&);

#define ZL_INSTANTIATE_ATTENTION(T, Mm)                                                           \
  template void attention_forward<T, Mm>(Runtime&, T*, T*, const T*, const std::vector<Segment>&, \
                                         Index, const AttentionShape&, const AttentionOptions&,   \
                                         AttentionWorkspace&);                                    \
  template void attention_backward<T, Mm>(                                                        \
      Runtime&, T*, const T*, const T*, const T*, const T*, const std::vector<Segment>&, Index,   \
      const AttentionShape&, const AttentionOptions&, AttentionWorkspace&);
ZL_INSTANTIATE_ATTENTION(float, float)
ZL_INSTANTIATE_ATTENTION(float, bf16)
ZL_INSTANTIATE_ATTENTION(double, double)
#undef ZL_INSTANTIATE_ATTENTION

}  // namespace zerolora
