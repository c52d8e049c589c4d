// How the CUDA backend cuts a batch's attention into cuDNN calls, and what those calls take in
// memory: the shape buckets its graphs are built for, the ragged slots, the deterministic
// backward's groups of segments and of heads, and the bounds estimate-memory counts. Host
// arithmetic only (no CUDA), shared by src/cuda/cudnn_attention.cpp and the memory estimate,
// and tested on every machine.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "ops/attention.hpp"

namespace zerolora {

// The ragged slots (cuDNN's batch dimension) a graph is built for: no fewer than the batch's
// segments; up to 8 a power of two, above it a multiple of a quarter of its power of two (10,
// 12, 14, 16, 20, 24, ...). So batches of a few segments more or less share a graph, while the
// deterministic backward's workspace, which every slot takes whether used or not (slots x heads
// x S^2), stays within 25% of what the segments need above 8 (the seed's 10 rows of 2048: 10
// slots, not 16) and one long sequence takes one slot (not 8: 4 GiB at 8192 tokens and 32 heads).
inline Index cudnn_slot_count(Index segments) {
  if (segments <= 1) return 1;
  Index octave = 1;
  while (octave * 2 <= segments) octave *= 2;
  if (segments <= 8) return octave == segments ? octave : 2 * octave;
  const Index step = octave / 4;
  return (segments + step - 1) / step * step;
}

// The sizes cuDNN's attention graphs are built for (a segment's length bound, the backward's
// token bound): n rounded up to a multiple of 128 and of a quarter of its power of two (128,
// 256, 384, 512, 640, ... 1024, 1280, ... 2048, 2560, ...), so that a graph serves every batch up
// to 25% shorter (above 512) and micro-batches of varying lengths build few graphs.
inline Index cudnn_size_bucket(Index n) {
  Index octave = 128;
  while (octave * 2 <= n) octave *= 2;
  const Index step = octave / 4 > 128 ? octave / 4 : 128;
  return n <= 128 ? 128 : (n + step - 1) / step * step;
}

// cuDNN's deterministic backward keeps dP for every slot of a call in its workspace: slots x
// heads x S^2 bf16 values, S the call's longest segment (bucketed). In one call, a batch of many
// segments of mixed lengths (--packing boundaries) would take a slot for every one of them at
// the longest one's S^2, tens of GiB where one long document sits among many short ones; one
// long sequence alone takes a slot of S^2 per head, quadratic in its length (4 GiB for 32 heads
// at 8192 tokens, 64 GiB at 32768). So the backward runs in calls over groups of segments and,
// in each, of heads:
// - consecutive segments (cudnn_backward_groups), each group within the dP of the batch cut into
//   segments as long as its longest one (at least 128 tokens), at that one's bucket S
//   (cudnn_dp_budget, in slot x S^2 units): one group where the segments are equal and at least
//   128 tokens long (every benchmark). (The 128: else a batch of many short segments would get a
//   slot of at least 128^2 for each.)
// - consecutive KV heads with all their query heads (so that GQA's dK and dV are summed within
//   the call), as many as divide the KV heads: the most whose dP is within a cap
//   (ZEROLORA_CUDNN_DP_WORKSPACE_MIB), else one (cudnn_kv_heads_per_call). A call whose slice
//   of the fp32 statistics [M, H] would not start 16 bytes aligned, as every tensor handed to
//   cuDNN must, reads a copy of it instead (cudnn_stats_slice_aligned): Qwen2.5's 7, 6 or 5
//   query heads per KV head split as finely as Llama's. Where even one KV head passes the cap,
//   a group of segments grows no further than one slot of its longest would take at it: a long
//   document leaves the short ones to another call rather than give each a slot of its S^2.
inline Index cudnn_dp_budget(Index M, Index longest) {
  const Index S = cudnn_size_bucket(longest), cut = std::max<Index>(longest, 128);
  return cudnn_slot_count((M + cut - 1) / cut) * S * S;
}

inline double cudnn_dp_bytes(Index slots_s2, Index query_heads) {
  // bf16; the frontend rounds S up to 64, and every bucket is a multiple of 128
  return 2.0 * static_cast<double>(slots_s2) * static_cast<double>(query_heads);
}
// The query heads of the smallest call: one KV head's.
inline Index cudnn_fewest_query_heads(const AttentionShape& shape) {
  return shape.heads / shape.kv_heads;
}
// The most KV heads dividing the layer's whose call's dP is within the cap, else one.
inline Index cudnn_kv_heads_per_call(Index slots_s2, const AttentionShape& shape,
                                     double cap_bytes) {
  const Index per_kv = shape.heads / shape.kv_heads;
  for (Index g = shape.kv_heads; g > 1; --g)
    if (shape.kv_heads % g == 0 && cudnn_dp_bytes(slots_s2, g * per_kv) <= cap_bytes) return g;
  return 1;
}
// Whether a call from KV head `kv_head_first` on finds its statistics' slice of [M, H] fp32 at a
// 16-byte boundary (its first query head a multiple of 4); else it is handed an aligned copy.
inline bool cudnn_stats_slice_aligned(Index kv_head_first, const AttentionShape& shape) {
  return kv_head_first * (shape.heads / shape.kv_heads) % 4 == 0;
}

// [first, last) segment indices of each group (in order, every segment in one).
struct SegmentRange {
  std::size_t first, last;
  bool operator==(const SegmentRange&) const = default;
};
inline std::vector<SegmentRange> cudnn_backward_groups(const std::vector<Segment>& segments,
                                                       Index M, const AttentionShape& shape,
                                                       double cap_bytes) {
  Index longest = 1;
  for (const auto& s : segments) longest = std::max(longest, s.length);
  const Index budget = cudnn_dp_budget(M, longest), fewest = cudnn_fewest_query_heads(shape);
  std::vector<SegmentRange> groups;
  std::size_t first = 0;
  Index group_longest = 0;
  for (std::size_t i = 0; i < segments.size(); ++i) {
    const Index S = cudnn_size_bucket(std::max(group_longest, segments[i].length));
    const Index slots_s2 = cudnn_slot_count(static_cast<Index>(i - first + 1)) * S * S;
    // A segment alone always fits: one slot of its S^2 is at most the budget.
    const bool over = slots_s2 > budget || cudnn_dp_bytes(slots_s2, fewest) >
                                               std::max(cap_bytes, cudnn_dp_bytes(S * S, fewest));
    if (i > first && over) {
      groups.push_back({first, i});
      first = i;
      group_longest = 0;
    }
    group_longest = std::max(group_longest, segments[i].length);
  }
  if (!segments.empty()) groups.push_back({first, segments.size()});
  return groups;
}

// The most dP bytes one call can take in a batch of M tokens in segments of at most S tokens:
// estimate-memory's bound of the deterministic backward's workspace. A call's slots x S^2 is at
// most its batch's budget, and at the fewest heads within the cap or one slot of the batch's
// longest: at most all heads at the budget, and at most the larger of those two.
inline double cudnn_dp_bytes_bound(Index M, Index S, const AttentionShape& shape,
                                   double cap_bytes) {
  const Index fewest = cudnn_fewest_query_heads(shape);
  double most = 0;
  for (Index L = 1; L <= std::min(S, M); ++L) {
    const Index bucket = cudnn_size_bucket(L);
    most = std::max(most, std::min(cudnn_dp_bytes(cudnn_dp_budget(M, L), shape.heads),
                                   std::max(cap_bytes, cudnn_dp_bytes(bucket * bucket, fewest))));
  }
  return most;
}

// The cap, bytes: ZEROLORA_CUDNN_DP_WORKSPACE_MIB (a number of MiB, at least 0; 0: the fewest
// heads per call), 1024 MiB when unset. A bad value is a ConfigError naming the variable.
inline double cudnn_dp_workspace_cap_from_environment() {
  const char* name = "ZEROLORA_CUDNN_DP_WORKSPACE_MIB";
  const char* value = std::getenv(name);
  if (!value || !*value) return 1024.0 * 1048576.0;
  char* end = nullptr;
  errno = 0;
  const double mib = std::strtod(value, &end);
  if (*end != '\0' || errno != 0 || !std::isfinite(mib) || mib < 0)
    throw ConfigError(std::string(name) + "=" + value +
                      ": a number of MiB, at least 0 (the cap on the dP workspace of one call "
                      "of cuDNN's deterministic attention backward)");
  return mib * 1048576.0;
}

// Which backward cuDNN runs: ZEROLORA_CUDNN_BACKWARD=deterministic (the default), atomic or
// atomic_dense_gradients (cudnn_backward_from_environment; ConfigError on another value).
//   kDeterministic  dP of every slot in the workspace (on Hopper slots x heads x S^2 x 2 bytes:
//                   1 GiB for 4 slots of 2048 tokens and 32 heads), written and read back; the
//                   same bits every run. Calls over groups of segments and of heads keep it
//                   within a cap (above).
//   kAtomic         dQ accumulated in fp32 by atomics in a workspace linear in the tokens
//                   (results repeat to fp32 rounding, not bit for bit), with dQ, dK and dV
//                   declared in q/k/v's own fused layout and ragged offsets, as TransformerEngine
//                   and PyTorch declare them; the accumulator zeroed before each call and the
//                   token bound given the padded rows (cudnn_padded_rows). Experimental: on
//                   an H100 (2026-12-06) it met the CPU in the attention tests.
//   kAtomicDenseGradients  the atomic backward with dense gradients, which returned NaN on
//                   every shape on an H200 (cuDNN 9.19, 2026-12-04): kept so that the device
//                   check can tell whether the layout was the cause (its accumulator takes dQ's
//                   offsets, where every integration read keeps dQ's layout equal to Q's).
enum class CudnnBackward { kDeterministic, kAtomic, kAtomicDenseGradients };
inline const char* cudnn_backward_name(CudnnBackward backward) {
  switch (backward) {
    case CudnnBackward::kDeterministic:
      return "deterministic";
    case CudnnBackward::kAtomic:
      return "atomic";
    case CudnnBackward::kAtomicDenseGradients:
      return "atomic_dense_gradients";
  }
  return "?";
}
inline CudnnBackward cudnn_backward_from_environment() {
  const char* value = std::getenv("ZEROLORA_CUDNN_BACKWARD");
  if (!value || !*value) return CudnnBackward::kDeterministic;
  for (const CudnnBackward b : {CudnnBackward::kDeterministic, CudnnBackward::kAtomic,
                                CudnnBackward::kAtomicDenseGradients})
    if (std::string(value) == cudnn_backward_name(b)) return b;
  throw ConfigError(std::string("ZEROLORA_CUDNN_BACKWARD=") + value +
                    ": deterministic, atomic or atomic_dense_gradients");
}

// Whether the backward writes dQ, dK and dV into one buffer in q/k/v's fused layout (row stride
// (H + 2 KV) hd; dK at column H hd, dV at (H + KV) hd) rather than three dense ones.
inline bool fused_gradients(CudnnBackward algorithm) {
  return algorithm == CudnnBackward::kAtomic;
}

// The atomic backward's fp32 dQ accumulator, at the start of the frontend's workspace, as the
// frontend sizes it for a call over `call_heads` query heads: ragged (its ragged workspace size
// for dims [slots, H, S, hd] on dQ's strides: the token bound's rows) where it keeps the token
// bound; dense [slots, H, S, hd] where it drops the bound, for a head size not a multiple of 16
// (its "known functional issue").
inline double cudnn_dq_accumulator_bytes(CudnnBackward algorithm, Index total_tokens, Index slots,
                                         Index max_length, Index call_heads,
                                         const AttentionShape& shape) {
  const double hd = static_cast<double>(shape.head_dim);
  const double row = fused_gradients(algorithm)
                         ? static_cast<double>(shape.heads + 2 * shape.kv_heads) * hd
                         : static_cast<double>(shape.heads) * hd;
  const double values =
      shape.head_dim % 16 == 0
          ? static_cast<double>(total_tokens - 1) * row + static_cast<double>(call_heads) * hd
          : static_cast<double>(slots) * static_cast<double>(call_heads) *
                static_cast<double>(max_length) * hd;
  return 4.0 * values;
}

// Rows the bf16 and statistics buffers handed to cuDNN's attention hold for an M-token batch:
// the backward graph is told of up to cudnn_size_bucket(M) tokens, and a tile starting in the
// last segment may read rows past its end (masked, but multiplied, so they must be finite).
// Nothing documents either bound, so the buffers cover the token bound and 256 rows beyond it
// (tiles of up to 256 query rows), the rows past M zero: 3% more rows at 8192 tokens, up to
// 25% more where M sits just above a bucket.
inline Index cudnn_padded_rows(Index M) {
  return cudnn_size_bucket(M) + 256;
}

}  // namespace zerolora
