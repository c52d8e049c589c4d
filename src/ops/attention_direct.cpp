// Attention for head dims up to 64 (up to 128 when forced) in explicit SIMD (ops/simd.hpp), no
// GEMM calls. One task per (segment, key/value head) holds that head's K and V transposed in
// a thread tile ([head dim, length]: keys along the vector lanes, zero-padded to whole
// vectors) and serves the head's group of query heads. Four query rows share every key vector
// loaded; keys outside a row's causal window are set to -inf, so exp makes them 0 and no
// branch is needed inside a block. Reductions over keys (P V forward, dS K backward) keep one
// vector per (row, head dim) and sum their lanes a vector's width at a time (simd::transpose_sum).
// Same contract as attention.hpp's kernels; results do not depend on the thread count (each
// task runs in sequence on one thread).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/cpu_dispatch.hpp"
#include "core/error.hpp"
#include "ops/attention_common.hpp"
#include "ops/simd.hpp"

#pragma GCC diagnostic ignored "-Wpsabi"  // simd.hpp: vectors are never passed out of line

namespace zerolora::attention_detail {
namespace {

using simd::Vec;

constexpr Index kRows = 4;          // query rows per pass: each key vector loaded serves them all
constexpr Index kChunk = 8;         // head dims summed per transpose_sum (tiles pad hd to it)
constexpr Index kMaxHeadDim = 128;  // per-row buffers (attention.cpp sends up to 64)

template <class T>
constexpr Index lanes() {
  return simd::kLanes<T>;
}

constexpr Index round_up(Index x, Index multiple) {
  return (x + multiple - 1) / multiple * multiple;
}

// A head's [L, hd] rows with stride ld -> [hd_padded, Lp]; the padding (keys past L, head
// dims past hd) is zero, so whole-vector loads never read garbage.
template <class T>
ZL_INLINE void transpose_head(T* dst, const T* src, Index ld, Index L, Index hd, Index Lp,
                              Index hd_padded) {
  for (Index d = 0; d < hd; ++d) {
    T* row = dst + d * Lp;
    for (Index j = 0; j < L; ++j) row[j] = src[j * ld + d];
    std::fill(row + L, row + Lp, T{0});
  }
  std::fill(dst + hd * Lp, dst + hd_padded * Lp, T{0});
}

// The kRows rows of one pass: the window of keys each attends to, and the key blocks that
// cover any of them.
template <class T>
struct RowPass {
  Index i0 = 0, rows = 0;  // first row's position in the segment; real rows (the rest pad)
  Index first[kRows] = {}, last[kRows] = {};
  Index begin_block = 0, end_block = 0;  // key blocks any row attends to
};

template <class T>
RowPass<T> row_pass(const AttentionShape& shape, Index i0, Index L) {
  RowPass<T> pass;
  pass.i0 = i0;
  pass.rows = std::min(kRows, L - i0);
  for (Index r = 0; r < kRows; ++r) {
    // padding rows repeat the last real row's window: finite scores, results discarded
    const Index position = i0 + std::min(r, pass.rows - 1);
    pass.first[r] = shape.first_key(position);
    pass.last[r] = position;
  }
  pass.begin_block = pass.first[0] / lanes<T>();
  pass.end_block = (i0 + pass.rows + lanes<T>() - 1) / lanes<T>();
  return pass;
}

// acc[r] = sum_d rows[r][d] * tile[d][col .. col + lanes) for the kRows rows. Even and odd
// head dims go to separate accumulators: twice the independent FMA chains, so the FMA units'
// latency is hidden.
template <class T>
ZL_INLINE void dot_block(Vec<T> acc[kRows], const T (&rows)[kRows][kMaxHeadDim], const T* tile,
                         Index Lp, Index hd, Index col) {
  Vec<T> odd[kRows];
  for (Index r = 0; r < kRows; ++r) acc[r] = odd[r] = Vec<T>{};
  Index d = 0;
  for (; d + 1 < hd; d += 2) {
    const Vec<T> key = simd::load(tile + d * Lp + col),
                 next = simd::load(tile + (d + 1) * Lp + col);
    for (Index r = 0; r < kRows; ++r) {
      acc[r] += rows[r][d] * key;
      odd[r] += rows[r][d + 1] * next;
    }
  }
  if (d < hd) {
    const Vec<T> key = simd::load(tile + d * Lp + col);
    for (Index r = 0; r < kRows; ++r) acc[r] += rows[r][d] * key;
  }
  for (Index r = 0; r < kRows; ++r) acc[r] += odd[r];
}

// sum_r v[r] * c[r][d], as a tree of pairs (short FMA chains instead of one of kRows).
template <class T>
ZL_INLINE Vec<T> rows_combined(const Vec<T> v[kRows], const T (&c)[kRows][kMaxHeadDim], Index d) {
  static_assert(kRows % 2 == 0 && (kRows & (kRows - 1)) == 0);
  Vec<T> part[kRows / 2];
  for (Index r = 0; r < kRows / 2; ++r)
    part[r] = v[2 * r] * c[2 * r][d] + v[2 * r + 1] * c[2 * r + 1][d];
  for (Index n = kRows / 2; n > 1; n /= 2)
    for (Index r = 0; r < n / 2; ++r) part[r] = part[2 * r] + part[2 * r + 1];
  return part[0];
}

// A constant row of N -inf, N zeros, N -inf (N = lanes): loaded at an offset, a vector that is
// -inf in the lanes before (or after) a given lane and 0 elsewhere.
template <class T>
struct EdgeRow {
  T values[3 * simd::kLanes<T>];
};
template <class T>
inline constexpr EdgeRow<T> kEdgeRow = [] {
  constexpr Index N = simd::kLanes<T>;
  EdgeRow<T> row{};
  for (Index i = 0; i < 3 * N; ++i)
    row.values[i] = i < N || i >= 2 * N ? -std::numeric_limits<T>::infinity() : T{0};
  return row;
}();

// Keys outside row r's window [first, last] become -inf. Only blocks that cross a window's
// edge need it: the diagonal ones and, with a sliding window, the first. -inf is added, from
// kEdgeRow, not selected by comparing key indices: GCC 12 compiled those comparisons (of a
// vector of consecutive keys with a row's bounds) lane by lane in scalar code, a third of a
// short segment's attention time.
template <class T>
ZL_INLINE void mask_block(Vec<T> s[kRows], const RowPass<T>& pass, Index col) {
  constexpr Index N = lanes<T>();
  if (col + N <= pass.i0 + 1 && col >= pass.first[kRows - 1]) return;
  const T* edges = kEdgeRow<T>.values;
  for (Index r = 0; r < kRows; ++r) {
    // -inf in lanes j < before (keys before the window) and j > last (keys after it)
    const Index before = std::clamp<Index>(pass.first[r] - col, 0, N);
    const Index last = std::clamp<Index>(pass.last[r] - col, -1, N - 1);
    s[r] += simd::load(edges + N - before) + simd::load(edges + 2 * N - 1 - last);
  }
}

// out[r][d] = sum over the pass's key blocks of w[r][j] * tile[d][j], for d < hd_padded.
// kLanes accumulators at a time (kLanes / kChunk rows x kChunk head dims), their lanes summed
// in one transpose_sum. With kExponentiate, w holds scores: the first head-dim chunk turns
// each block into exp(w - shift[r]) in place (the later chunks, and the caller, read
// probabilities) and row_sum[r] receives the sum of row r's exps - the softmax's sum, in the
// same pass as its products.
template <bool kExponentiate, class T>
ZL_INLINE void reduce_rows(T out[kRows][kMaxHeadDim], T* const w[kRows], const T* tile, Index Lp,
                           Index hd_padded, Index begin_block, Index end_block,
                           const T* shift = nullptr, T* row_sum = nullptr) {
  constexpr Index N = lanes<T>(), group = N / kChunk;
  for (Index r0 = 0; r0 < kRows; r0 += group)
    for (Index d0 = 0; d0 < hd_padded; d0 += kChunk) {
      const bool exponentiate = kExponentiate && d0 == 0;
      Vec<T> acc[N] = {}, sums[group] = {};
      for (Index b = begin_block; b < end_block; ++b) {
        const Index col = b * N;
        Vec<T> weight[group];
        for (Index g = 0; g < group; ++g) {
          weight[g] = simd::load(w[r0 + g] + col);
          if (exponentiate) {
            weight[g] = simd::exp_nonpositive(weight[g] - shift[r0 + g]);
            sums[g] += weight[g];
            simd::store(w[r0 + g] + col, weight[g]);
          }
        }
        for (Index dd = 0; dd < kChunk; ++dd) {
          const Vec<T> value = simd::load(tile + (d0 + dd) * Lp + col);
          for (Index g = 0; g < group; ++g) acc[g * kChunk + dd] += weight[g] * value;
        }
      }
      if (exponentiate)
        for (Index g = 0; g < group; ++g) row_sum[r0 + g] = simd::horizontal_sum(sums[g]);
      const Vec<T> sums_of_lanes = simd::transpose_sum<T>(acc);
      for (Index g = 0; g < group; ++g)
        for (Index dd = 0; dd < kChunk; ++dd) out[r0 + g][d0 + dd] = sums_of_lanes[g * kChunk + dd];
    }
}

struct TaskTiles {
  Index Lp, hd_padded;
  std::size_t head_bytes, row_bytes;
};

template <class T>
TaskTiles task_tiles(Index hd, Index longest) {
  const Index Lp = round_up(longest, lanes<T>()), hd_padded = round_up(hd, kChunk);
  return {Lp, hd_padded, aligned_bytes(static_cast<std::size_t>(hd_padded * Lp) * sizeof(T)),
          aligned_bytes(static_cast<std::size_t>(Lp) * sizeof(T))};
}

// What the forward and the backward share: the shape's numbers, the tile geometry and the
// tasks, one per (segment, key/value head), longest segments first so that the threads
// finish together.
template <class T>
struct DirectPlan {
  Index H, KV, hd, ld, group;
  T scale;
  TaskTiles tiles;
  std::vector<QueryBlock> tasks;
  DirectPlan(const AttentionShape& shape, const std::vector<Segment>& segments)
      : H(shape.heads),
        KV(shape.kv_heads),
        hd(shape.head_dim),
        ld(shape.qkv_stride()),
        group(H / KV),
        scale(static_cast<T>(1.0 / std::sqrt(static_cast<double>(hd)))),
        tiles(task_tiles<T>(hd, max_length(segments))),
        tasks(longest_first(segments, KV)) {
    ZL_CHECK(hd <= kMaxHeadDim);
  }
};

// One task's K and V, transposed into the start of the thread's tile; `rest` is what follows.
template <class T>
struct HeadTiles {
  Index L, Lp;  // the segment's length, rounded up to whole vectors
  T *kt, *vt;
  std::byte* rest;
};

template <class T>
ZL_INLINE HeadTiles<T> head_tiles(const DirectPlan<T>& plan, const QueryBlock& task,
                                  const std::vector<Segment>& segments, const T* qkv,
                                  AttentionWorkspace& workspace) {
  const Segment& seg = segments[task.segment];
  const Index g = task.head;
  HeadTiles<T> head{seg.length, round_up(seg.length, lanes<T>()), nullptr, nullptr, nullptr};
  std::byte* cursor = workspace.tiles[omp_get_thread_num()].data();
  head.kt = carve<T>(cursor, plan.tiles.hd_padded * plan.tiles.Lp);
  head.vt = carve<T>(cursor, plan.tiles.hd_padded * plan.tiles.Lp);
  head.rest = cursor;
  const T* rows = qkv + seg.begin * plan.ld;
  transpose_head(head.kt, rows + (plan.H + g) * plan.hd, plan.ld, head.L, plan.hd, head.Lp,
                 plan.tiles.hd_padded);
  transpose_head(head.vt, rows + (plan.H + plan.KV + g) * plan.hd, plan.ld, head.L, plan.hd,
                 head.Lp, plan.tiles.hd_padded);
  return head;
}

}  // namespace

template <class T>
ZL_CPU_CLONES void attention_forward_direct(Runtime& rt, T* out, T* lse, const T* qkv,
                                            const std::vector<Segment>& segments, Index M,
                                            const AttentionShape& shape,
                                            const AttentionOptions& options,
                                            AttentionWorkspace& workspace) {
  constexpr Index N = lanes<T>();
  const DirectPlan<T> plan(shape, segments);
  const Index H = plan.H, hd = plan.hd, ld = plan.ld, group = plan.group;
  const T scale = plan.scale;
  const TaskTiles& tiles = plan.tiles;
  ensure_tiles(workspace, rt.threads(), 2 * tiles.head_bytes + kRows * tiles.row_bytes);
#pragma omp parallel num_threads(rt.threads())
  {
    const simd::FlushDenormals flush;
#pragma omp for schedule(dynamic, 1)
    for (Index t = 0; t < static_cast<Index>(plan.tasks.size()); ++t) {
      const Segment& seg = segments[plan.tasks[t].segment];
      const Index g = plan.tasks[t].head;
      const HeadTiles<T> head = head_tiles(plan, plan.tasks[t], segments, qkv, workspace);
      const Index L = head.L, Lp = head.Lp;
      const T *kt = head.kt, *vt = head.vt;
      std::byte* cursor = head.rest;
      T* p[kRows];
      for (Index r = 0; r < kRows; ++r) p[r] = carve<T>(cursor, tiles.Lp);
      for (Index h = g * group; h < (g + 1) * group; ++h)
        for (Index i0 = 0; i0 < L; i0 += kRows) {
          const RowPass<T> pass = row_pass<T>(shape, i0, L);
          T q[kRows][kMaxHeadDim];
          for (Index r = 0; r < kRows; ++r) {
            const T* row = qkv + (seg.begin + pass.last[r]) * ld + h * hd;
            for (Index d = 0; d < hd; ++d) q[r][d] = row[d] * scale;
          }
          // Scores, masked, and each row's running maximum.
          Vec<T> row_max[kRows];
          for (Index r = 0; r < kRows; ++r)
            row_max[r] = simd::splat(-std::numeric_limits<T>::infinity());
          for (Index b = pass.begin_block; b < pass.end_block; ++b) {
            Vec<T> s[kRows];
            dot_block(s, q, kt, Lp, hd, b * N);
            if (options.softmax_bf16)
              for (Index r = 0; r < kRows; ++r) s[r] = simd::round_to_bf16(s[r]);
            mask_block(s, pass, b * N);
            for (Index r = 0; r < kRows; ++r) {
              row_max[r] = simd::max(row_max[r], s[r]);
              simd::store(p[r] + b * N, s[r]);
            }
          }
          // Softmax numerators and each row's sum; then P V. With bf16 probabilities the
          // numerators are rounded (which needs their sum) before the products; otherwise both
          // come from one pass.
          T row_max_scalar[kRows], total[kRows], acc[kRows][kMaxHeadDim];
          for (Index r = 0; r < kRows; ++r) row_max_scalar[r] = simd::horizontal_max(row_max[r]);
          if (options.softmax_bf16) {
            for (Index r = 0; r < kRows; ++r) {
              Vec<T> sum{};
              for (Index b = pass.begin_block; b < pass.end_block; ++b) {
                const Vec<T> e =
                    simd::exp_nonpositive(simd::load(p[r] + b * N) - row_max_scalar[r]);
                sum += e;
                simd::store(p[r] + b * N, e);
              }
              total[r] = simd::horizontal_sum(sum);
              for (Index b = pass.begin_block; b < pass.end_block; ++b)
                simd::store(p[r] + b * N,
                            simd::round_to_bf16(simd::load(p[r] + b * N) / total[r]) * total[r]);
            }
            reduce_rows<false>(acc, p, vt, Lp, tiles.hd_padded, pass.begin_block, pass.end_block);
          } else {
            reduce_rows<true>(acc, p, vt, Lp, tiles.hd_padded, pass.begin_block, pass.end_block,
                              row_max_scalar, total);
          }
          T inv[kRows];
          for (Index r = 0; r < kRows; ++r) {
            inv[r] = T{1} / total[r];
            if (r < pass.rows)
              lse[h * M + seg.begin + i0 + r] = row_max_scalar[r] + std::log(total[r]);
          }
          for (Index r = 0; r < pass.rows; ++r) {
            T* row = out + (seg.begin + i0 + r) * H * hd + h * hd;
            for (Index d = 0; d < hd; ++d) row[d] = acc[r][d] * inv[r];
          }
        }
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
  constexpr Index N = lanes<T>();
  const DirectPlan<T> plan(shape, segments);
  const Index H = plan.H, KV = plan.KV, hd = plan.hd, ld = plan.ld, group = plan.group;
  const T scale = plan.scale;
  const TaskTiles& tiles = plan.tiles;
  ensure_tiles(workspace, rt.threads(), 4 * tiles.head_bytes + kRows * tiles.row_bytes);
#pragma omp parallel num_threads(rt.threads())
  {
    const simd::FlushDenormals flush;
#pragma omp for schedule(dynamic, 1)
    for (Index t = 0; t < static_cast<Index>(plan.tasks.size()); ++t) {  // owns dK, dV of a head
      const Segment& seg = segments[plan.tasks[t].segment];
      const Index g = plan.tasks[t].head;
      const HeadTiles<T> head = head_tiles(plan, plan.tasks[t], segments, qkv, workspace);
      const Index L = head.L, Lp = head.Lp;
      const T *kt = head.kt, *vt = head.vt;
      std::byte* cursor = head.rest;
      T* dkt = carve<T>(cursor, tiles.hd_padded * tiles.Lp);
      T* dvt = carve<T>(cursor, tiles.hd_padded * tiles.Lp);
      T* ds[kRows];
      for (Index r = 0; r < kRows; ++r) ds[r] = carve<T>(cursor, tiles.Lp);
      std::fill_n(dkt, tiles.hd_padded * Lp, T{0});
      std::fill_n(dvt, tiles.hd_padded * Lp, T{0});
      for (Index h = g * group; h < (g + 1) * group; ++h)
        for (Index i0 = 0; i0 < L; i0 += kRows) {
          const RowPass<T> pass = row_pass<T>(shape, i0, L);
          // q scaled (scores, and dK = dS^T q scale), dO (zero for padding rows, so that they add
          // nothing), delta = dO . O, and lse (+inf for padding rows: their P is 0).
          T q[kRows][kMaxHeadDim], d_o[kRows][kMaxHeadDim], delta[kRows], row_lse[kRows];
          for (Index r = 0; r < kRows; ++r) {
            const Index row = seg.begin + pass.last[r];
            const T* q_row = qkv + row * ld + h * hd;
            const T* d_o_row = diff_out + row * H * hd + h * hd;
            const T* o_row = out + row * H * hd + h * hd;
            const bool real = r < pass.rows;
            delta[r] = 0;
            for (Index d = 0; d < hd; ++d) {
              q[r][d] = q_row[d] * scale;
              d_o[r][d] = real ? d_o_row[d] : T{0};
              delta[r] += d_o[r][d] * o_row[d];
            }
            row_lse[r] = real ? lse[h * M + row] : std::numeric_limits<T>::infinity();
          }
          // Per key block: P from lse, dP = dO V^T, dS' = P (dP - delta) (dS = dS' scale), then
          // dV += P^T dO and dK += dS'^T (q scale) while the block is in registers.
          for (Index b = pass.begin_block; b < pass.end_block; ++b) {
            const Index col = b * N;
            Vec<T> prob[kRows], dp[kRows];
            dot_block(prob, q, kt, Lp, hd, col);
            if (options.softmax_bf16)
              for (Index r = 0; r < kRows; ++r) prob[r] = simd::round_to_bf16(prob[r]);
            mask_block(prob, pass, col);
            for (Index r = 0; r < kRows; ++r) {
              prob[r] = simd::exp_nonpositive(prob[r] - row_lse[r]);
              if (options.softmax_bf16) prob[r] = simd::round_to_bf16(prob[r]);
            }
            dot_block(dp, d_o, vt, Lp, hd, col);
            for (Index r = 0; r < kRows; ++r) {
              dp[r] = prob[r] * (dp[r] - delta[r]);
              simd::store(ds[r] + col, dp[r]);
            }
            for (Index d = 0; d < hd; ++d) {
              simd::store(dvt + d * Lp + col,
                          simd::load(dvt + d * Lp + col) + rows_combined(prob, d_o, d));
              simd::store(dkt + d * Lp + col,
                          simd::load(dkt + d * Lp + col) + rows_combined(dp, q, d));
            }
          }
          T dq[kRows][kMaxHeadDim];  // dQ = dS K = scale dS' K
          reduce_rows<false>(dq, ds, kt, Lp, tiles.hd_padded, pass.begin_block, pass.end_block);
          for (Index r = 0; r < pass.rows; ++r) {
            T* row = diff_qkv + (seg.begin + i0 + r) * ld + h * hd;
            for (Index d = 0; d < hd; ++d) row[d] = dq[r][d] * scale;
          }
        }
      T* dk = diff_qkv + seg.begin * ld + (H + g) * hd;
      T* dv = diff_qkv + seg.begin * ld + (H + KV + g) * hd;
      for (Index j = 0; j < L; ++j)
        for (Index d = 0; d < hd; ++d) {
          dk[j * ld + d] = dkt[d * Lp + j];
          dv[j * ld + d] = dvt[d * Lp + j];
        }
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
