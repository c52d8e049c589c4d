// Attention kernels (contract in attention.hpp): the tiled kernel for head dims above 64, whose
// score and output blocks are GEMMs through oneDNN; generation over a KV cache. Head dims up to
// 64 go to attention_direct.cpp's SIMD kernel (at 64 it is twice the tiled kernel's speed
// forward and 1.1x backward, bf16 GEMMs on AMX included; at 128 the two are even:
// BENCHMARKS.md).
#include "ops/attention.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "core/bf16.hpp"
#include "core/cpu_dispatch.hpp"
#include "core/error.hpp"
#include "core/fast_math.hpp"
#include "ops/attention_common.hpp"
#include "ops/convert.hpp"
#include "ops/matmul.hpp"
#include "ops/simd.hpp"

#pragma GCC diagnostic ignored "-Wpsabi"  // simd.hpp: vectors are never passed out of line

namespace zerolora {

using namespace attention_detail;  // shared helpers and the small-head kernels

namespace {

// The tile GEMMs' operands, head-major in the matmul type and segment by segment: head p of
// segment s is [span(s), hd] dense, its rows past the segment's length zero. Dense operands are
// what oneDNN's AMX kernels take: given the activations' strided rows, oneDNN 2.6 runs the same
// GEMMs on gemm:jit at half the speed or less (BENCHMARKS.md). The padding lets a tile's rows
// and keys run to a multiple of kTileStep without reading another segment, so tile shapes (and
// oneDNN's primitives) repeat whatever the segment lengths.
constexpr Index kTileStep = 16;

inline Index round_up(Index n, Index step) {
  return (n + step - 1) / step * step;
}

struct HeadLayout {
  std::vector<Index> begin;  // each segment's first packed row
  Index rows = 0;            // packed rows per head
  Index hd = 0;

  HeadLayout(const std::vector<Segment>& segments, Index head_dim) : hd(head_dim) {
    for (const auto& seg : segments) {
      begin.push_back(rows);
      rows += round_up(seg.length, kTileStep);
    }
  }
  std::size_t elements(Index heads) const { return static_cast<std::size_t>(heads * rows * hd); }
  // Rows [row, row + count) of head p in segment s.
  template <class Mm>
  Mat<const Mm> at(const Mm* packed, Index p, Index s, Index row, Index count) const {
    return Mat<const Mm>::dense(packed + (p * rows + begin[s] + row) * hd, count, hd);
  }
};

// heads = `src`'s `count` heads (rows `row_stride` apart, head p at column p * hd) packed as
// `layout` says.
template <class Mm, class T>
ZL_CPU_CLONES void pack_heads(Runtime& rt, Mm* heads, const T* src, Index row_stride, Index count,
                              const std::vector<Segment>& segments, const HeadLayout& layout) {
  const Index hd = layout.hd;
#pragma omp parallel for num_threads(rt.threads()) collapse(2) schedule(static)
  for (Index p = 0; p < count; ++p)
    for (Index s = 0; s < static_cast<Index>(segments.size()); ++s) {
      const Segment& seg = segments[s];
      Mm* dst = heads + (p * layout.rows + layout.begin[s]) * hd;
      for (Index i = 0; i < seg.length; ++i) {
        const T* row = src + (seg.begin + i) * row_stride + p * hd;
        for (Index d = 0; d < hd; ++d) dst[i * hd + d] = convert_to<Mm>(row[d]);
      }
      std::fill(dst + seg.length * hd, dst + round_up(seg.length, kTileStep) * hd,
                convert_to<Mm>(0.0f));
    }
}

// The rows a tile from q0 computes: a block, or the segment's packed rows left (its rest rounded
// up to kTileStep). Its keys [0, q0 + rows) never leave the segment's packed rows.
inline Index tile_rows(const Segment& seg, Index q0, Index block) {
  return std::min(block, round_up(seg.length, kTileStep) - q0);
}

// The largest of x[0, n): GCC leaves a float max reduction scalar even under omp simd (NaN and
// signed-zero rules), a 4-cycle dependency per key that was 70% of the forward's own time at
// seq 2048. Vectors of float or double (simd.hpp).
template <class T>
ZL_INLINE T max_of(const T* x, Index n) {
  constexpr Index N = simd::kLanes<T>;
  T best = -std::numeric_limits<T>::infinity();
  Index j = 0;
  if (n >= N) {
    simd::Vec<T> m = simd::load(x);
    for (j = N; j + N <= n; j += N) m = simd::max(m, simd::load(x + j));
    best = simd::horizontal_max(m);
  }
  for (; j < n; ++j) best = std::max(best, x[j]);
  return best;
}

}  // namespace

// kDirect may be forced up to head dim 128 (its per-row buffers' size), for tests and benches.
bool attention_uses_direct(const AttentionShape& shape, const AttentionOptions& options) {
  if (options.kernel == AttentionOptions::Kernel::kAuto) return shape.head_dim <= 64;
  ZL_CHECK(options.kernel != AttentionOptions::Kernel::kDirect || shape.head_dim <= 128);
  return options.kernel == AttentionOptions::Kernel::kDirect;
}

template <class T, class Mm>
ZL_CPU_CLONES void attention_forward(Runtime& rt, T* out, T* lse, const T* qkv,
                                     const std::vector<Segment>& segments, Index M,
                                     const AttentionShape& shape, const AttentionOptions& options,
                                     AttentionWorkspace& workspace) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kAttention);
  if (attention_uses_direct(shape, options))
    return attention_forward_direct(rt, out, lse, qkv, segments, M, shape, options, workspace);
  const Index H = shape.heads, KV = shape.kv_heads, hd = shape.head_dim;
  const Index ld = shape.qkv_stride(), group = H / KV, block = options.block;
  ZL_CHECK(H % KV == 0 && block > 0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));

  const HeadLayout layout(segments, hd);
  workspace.operands.ensure(layout.elements(H + 2 * KV) * sizeof(Mm));
  Mm* heads = reinterpret_cast<Mm*>(workspace.operands.data());
  pack_heads(rt, heads, qkv, ld, H + 2 * KV, segments, layout);

  const Index longest = round_up(max_length(segments), kTileStep);
  const std::size_t tile_bytes = aligned_bytes(block * longest * sizeof(T)) +
                                 aligned_bytes(block * longest * sizeof(Mm)) +
                                 aligned_bytes(block * hd * sizeof(T));
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
    const Index bq = std::min(block, seg.length - q0);  // the tile's real rows
    const Index tq = tile_rows(seg, q0, block);         // the rows it computes
    const Index kend = q0 + tq;  // keys it computes; row r sees [first, q0 + r]

    std::byte* cursor = workspace.tiles[omp_get_thread_num()].data();
    T* scores = carve<T>(cursor, tq * kend);  // [tq, kend]
    Mm* probs = nullptr;                      // [tq, kend]
    if constexpr (std::is_same_v<Mm, T>)
      probs = scores;
    else
      probs = carve<Mm>(cursor, tq * kend);
    T* out_tile = carve<T>(cursor, tq * hd);  // [tq, hd]

    const Mat<const Mm> k = layout.at(heads, H + g, s, 0, kend);
    const Mat<const Mm> v = layout.at(heads, H + KV + g, s, 0, kend);
    matmul<Mm, T>(rt, layout.at(heads, h, s, q0, tq), k.t(), Mat<T>::dense(scores, tq, kend),
                  scale);

    for (Index r = 0; r < bq; ++r) {
      const Index first = shape.first_key(q0 + r), limit = q0 + r + 1;
      T* srow = scores + r * kend;
      if (options.softmax_bf16)
        for (Index j = first; j < limit; ++j) srow[j] = round_to_bf16(srow[j]);
      const T row_max = max_of(srow + first, limit - first);
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (Index j = first; j < limit; ++j) {
        srow[j] = fast_exp(srow[j] - row_max);
        sum += srow[j];
      }
      const T inv_sum = T{1} / sum;
      Mm* prow = probs + r * kend;
      for (Index j = 0; j < first; ++j) prow[j] = convert_to<Mm>(0.0f);  // outside the window
      if (options.softmax_bf16) {
        for (Index j = first; j < limit; ++j)
          prow[j] = convert_to<Mm>(round_to_bf16(srow[j] * inv_sum));
      } else {
#pragma omp simd
        for (Index j = first; j < limit; ++j) prow[j] = convert_to<Mm>(srow[j] * inv_sum);
      }
      for (Index j = limit; j < kend; ++j) prow[j] = convert_to<Mm>(0.0f);
      lse[h * M + seg.begin + q0 + r] = row_max + std::log(sum);
    }
    // Rows past the segment's end: zero, so their (discarded) outputs are finite.
    std::fill(probs + bq * kend, probs + tq * kend, convert_to<Mm>(0.0f));
    matmul<Mm, T>(rt, Mat<const Mm>::dense(probs, tq, kend), v, Mat<T>::dense(out_tile, tq, hd));
    for (Index r = 0; r < bq; ++r)
      std::copy_n(out_tile + r * hd, hd, out + (seg.begin + q0 + r) * H * hd + h * hd);
  }
}

template <class T, class Mm>
ZL_CPU_CLONES void attention_backward(Runtime& rt, T* diff_qkv, const T* diff_out, const T* qkv,
                                      const T* out, const T* lse,
                                      const std::vector<Segment>& segments, Index M,
                                      const AttentionShape& shape, const AttentionOptions& options,
                                      AttentionWorkspace& workspace) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kAttention);
  if (attention_uses_direct(shape, options))
    return attention_backward_direct(rt, diff_qkv, diff_out, qkv, out, lse, segments, M, shape,
                                     options, workspace);
  const Index H = shape.heads, KV = shape.kv_heads, hd = shape.head_dim;
  const Index ld = shape.qkv_stride(), group = H / KV, block = options.block;
  ZL_CHECK(H % KV == 0 && block > 0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));

  const HeadLayout layout(segments, hd);
  const std::size_t qkv_bytes = aligned_bytes(layout.elements(H + 2 * KV) * sizeof(Mm));
  workspace.operands.ensure(qkv_bytes + layout.elements(H) * sizeof(Mm));
  Mm* heads = reinterpret_cast<Mm*>(workspace.operands.data());
  Mm* dout_heads = reinterpret_cast<Mm*>(workspace.operands.data() + qkv_bytes);
  pack_heads(rt, heads, qkv, ld, H + 2 * KV, segments, layout);
  pack_heads(rt, dout_heads, diff_out, H * hd, H, segments, layout);

  const Index longest = round_up(max_length(segments), kTileStep);
  const std::size_t tile_bytes =
      2 * aligned_bytes(block * longest * sizeof(T)) +
      2 * aligned_bytes(block * longest * sizeof(Mm)) + aligned_bytes(block * sizeof(T)) +
      aligned_bytes(block * hd * sizeof(T)) + 2 * aligned_bytes(longest * hd * sizeof(T));
  ensure_tiles(workspace, rt.threads(), tile_bytes);

  // One task per (segment, key/value head): it owns that head's dK and dV rows, summed over
  // the head's query group in dense tiles and written out at the end.
  std::vector<QueryBlock> tasks;
  for (Index s = 0; s < static_cast<Index>(segments.size()); ++s)
    for (Index g = 0; g < KV; ++g) tasks.push_back({s, g, 0});

#pragma omp parallel for num_threads(rt.threads()) schedule(dynamic, 1)
  for (Index t = 0; t < static_cast<Index>(tasks.size()); ++t) {
    const Index s = tasks[t].segment;
    const Segment& seg = segments[s];
    const Index g = tasks[t].head;
    const Index keys = round_up(seg.length, kTileStep);
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
    T* dq_tile = carve<T>(cursor, block * hd);   // [block, hd]
    T* dk_sum = carve<T>(cursor, longest * hd);  // [keys, hd]
    T* dv_sum = carve<T>(cursor, longest * hd);
    std::fill_n(dk_sum, keys * hd, T{0});
    std::fill_n(dv_sum, keys * hd, T{0});

    for (Index h = g * group; h < (g + 1) * group; ++h) {
      for (Index q0 = 0; q0 < seg.length; q0 += block) {
        const Index bq = std::min(block, seg.length - q0);  // the tile's real rows
        const Index tq = tile_rows(seg, q0, block);         // the rows it computes
        const Index kend = q0 + tq;
        const Index row0 = seg.begin + q0;
        const Mat<const Mm> q = layout.at(heads, h, s, q0, tq);
        const Mat<const Mm> k = layout.at(heads, H + g, s, 0, kend);
        const Mat<const Mm> v = layout.at(heads, H + KV + g, s, 0, kend);
        const Mat<const Mm> dout = layout.at(dout_heads, h, s, q0, tq);

        // delta_r = dO_r . O_r = sum_j P_rj dP_rj
        for (Index r = 0; r < bq; ++r) {
          const T* o_row = out + (row0 + r) * H * hd + h * hd;
          const T* do_row = diff_out + (row0 + r) * H * hd + h * hd;
          T dot = 0;
          for (Index d = 0; d < hd; ++d) dot += o_row[d] * do_row[d];
          delta[r] = dot;
        }
        // P = exp(scale * Q K^T - lse), zero above the diagonal and on rows past the segment
        matmul<Mm, T>(rt, q, k.t(), Mat<T>::dense(probs, tq, kend), scale);
        for (Index r = 0; r < bq; ++r) {
          const Index first = shape.first_key(q0 + r), limit = q0 + r + 1;
          const T row_lse = lse[h * M + row0 + r];
          T* prow = probs + r * kend;
          for (Index j = 0; j < first; ++j) prow[j] = T{0};  // outside the window
          if (options.softmax_bf16) {
            for (Index j = first; j < limit; ++j)
              prow[j] = round_to_bf16(fast_exp(round_to_bf16(prow[j]) - row_lse));
          } else {  // apart, so that it vectorises
#pragma omp simd
            for (Index j = first; j < limit; ++j) prow[j] = fast_exp(prow[j] - row_lse);
          }
          for (Index j = limit; j < kend; ++j) prow[j] = T{0};
        }
        std::fill(probs + bq * kend, probs + tq * kend, T{0});
        if constexpr (!std::is_same_v<Mm, T>) convert(rt, probs_mm, probs, tq * kend);
        const Mat<const Mm> p_mm = Mat<const Mm>::dense(probs_mm, tq, kend);
        // dV += P^T dO
        matmul<Mm, T>(rt, p_mm.t(), dout, Mat<T>::dense(dv_sum, kend, hd), 1.0f, true);
        // dP = dO V^T;  dS = P * (dP - delta), zero on rows past the segment
        matmul<Mm, T>(rt, dout, v.t(), Mat<T>::dense(dprobs, tq, kend));
        for (Index r = 0; r < bq; ++r) {
          const T* prow = probs + r * kend;
          const T* dprow = dprobs + r * kend;
          Mm* dsrow = dscores_mm + r * kend;
#pragma omp simd
          for (Index j = 0; j < kend; ++j)
            dsrow[j] = convert_to<Mm>(prow[j] * (dprow[j] - delta[r]));
        }
        std::fill(dscores_mm + bq * kend, dscores_mm + tq * kend, convert_to<Mm>(0.0f));
        const Mat<const Mm> ds = Mat<const Mm>::dense(dscores_mm, tq, kend);
        // dQ = scale * dS K;  dK += scale * dS^T Q
        matmul<Mm, T>(rt, ds, k, Mat<T>::dense(dq_tile, tq, hd), scale);
        for (Index r = 0; r < bq; ++r)
          std::copy_n(dq_tile + r * hd, hd, diff_qkv + (row0 + r) * ld + h * hd);
        matmul<Mm, T>(rt, ds.t(), q, Mat<T>::dense(dk_sum, kend, hd), scale, true);
      }
    }
    for (Index i = 0; i < seg.length; ++i) {
      std::copy_n(dk_sum + i * hd, hd, diff_qkv + (seg.begin + i) * ld + (H + g) * hd);
      std::copy_n(dv_sum + i * hd, hd, diff_qkv + (seg.begin + i) * ld + (H + KV + g) * hd);
    }
  }
}

template <class T>
ZL_CPU_CLONES void attention_cached(Runtime& rt, T* out, const T* q, Index q_stride, const T* keys,
                                    const T* values, Index first, Index M,
                                    const AttentionShape& shape) {
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
        const Index from = shape.first_key(first + i);  // the sliding window's first key
        const T* qi = q + i * q_stride + h * hd;
        T row_max = -std::numeric_limits<T>::infinity();
        for (Index j = from; j < keys_seen; ++j) {
          const T* kj = keys + j * kv_stride + g * hd;
          T dot = 0;
#pragma omp simd reduction(+ : dot)
          for (Index d = 0; d < hd; ++d) dot += qi[d] * kj[d];
          scores[j] = dot * scale;
          row_max = std::max(row_max, scores[j]);
        }
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (Index j = from; j < keys_seen; ++j) {
          scores[j] = fast_exp(scores[j] - row_max);
          sum += scores[j];
        }
        T* o = out + i * H * hd + h * hd;
        std::fill_n(o, hd, T{0});
        for (Index j = from; j < keys_seen; ++j) {
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
