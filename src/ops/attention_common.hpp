// Internals shared by the attention kernels (attention.cpp: the tiled GEMM kernel for large
// head dims and generation; attention_direct.cpp: the small-head kernels): per-thread tile
// carving, task ordering, bf16 rounding for --attn_softmax_bf16.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "core/bf16.hpp"
#include "core/cpu_dispatch.hpp"
#include "ops/attention.hpp"

namespace zerolora::attention_detail {

template <class T>
ZL_INLINE T round_to_bf16(T x) {
  return static_cast<T>(to_float(to_bf16(static_cast<float>(x))));
}

inline Index max_length(const std::vector<Segment>& segments) {
  Index longest = 0;
  for (const auto& seg : segments) longest = std::max(longest, seg.length);
  return longest;
}

template <class U>
U* carve(std::byte*& cursor, Index count) {
  U* p = reinterpret_cast<U*>(cursor);
  cursor += (static_cast<std::size_t>(count) * sizeof(U) + 63) / 64 * 64;
  return p;
}

inline std::size_t aligned_bytes(std::size_t bytes) {
  return (bytes + 63) / 64 * 64;
}

inline void ensure_tiles(AttentionWorkspace& workspace, int threads, std::size_t bytes) {
  if (workspace.tiles.size() < static_cast<std::size_t>(threads))
    workspace.tiles.resize(static_cast<std::size_t>(threads));
  for (auto& tile : workspace.tiles) tile.ensure(bytes);
}

struct QueryBlock {
  Index segment;
  Index head;  // query head (forward) or key/value head (backward)
  Index q0;
};

// (segment, head) pairs, longest segments first: the costliest tasks start first, so dynamic
// scheduling leaves no thread idle at the end (attention costs L^2 per segment).
inline std::vector<QueryBlock> longest_first(const std::vector<Segment>& segments, Index heads) {
  std::vector<QueryBlock> tasks;
  for (Index s = 0; s < static_cast<Index>(segments.size()); ++s)
    for (Index h = 0; h < heads; ++h) tasks.push_back({s, h, 0});
  std::stable_sort(tasks.begin(), tasks.end(), [&](const QueryBlock& a, const QueryBlock& b) {
    return segments[a.segment].length > segments[b.segment].length;
  });
  return tasks;
}

// The small-head kernels (attention_direct.cpp): one task per (segment, head) holding K and V
// transposed in a thread tile, four query rows per pass. T is float or double.
template <class T>
void attention_forward_direct(Runtime& rt, T* out, T* lse, const T* qkv,
                              const std::vector<Segment>& segments, Index M,
                              const AttentionShape& shape, const AttentionOptions& options,
                              AttentionWorkspace& workspace);
template <class T>
void attention_backward_direct(Runtime& rt, T* diff_qkv, const T* diff_out, const T* qkv,
                               const T* out, const T* lse, const std::vector<Segment>& segments,
                               Index M, const AttentionShape& shape,
                               const AttentionOptions& options, AttentionWorkspace& workspace);

}  // namespace zerolora::attention_detail
