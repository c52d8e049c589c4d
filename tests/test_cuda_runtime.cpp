// The CUDA backend's runtime pieces: the column-major GEMM problem of a row-major view and the
// cuDNN graph keys (host-side, tested everywhere), and on a GPU cuDNN taking the recipe's
// attention shapes, NCCL's non-blocking mode refused, the GEMM plan cache bounded, and the
// profiler timing ops on the GPU's clock.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "core/error.hpp"
#include "cuda/cuda_device.hpp"
#include "cuda/cuda_ops.hpp"
#ifdef ZEROLORA_CUDNN
#include "cuda/cudnn_attention.hpp"
#endif
#include "cuda/gemm.hpp"
#include "cuda/nccl_communicator.hpp"
#include "cuda_backend_test.hpp"
#include "ops/attention.hpp"
#include "ops/cudnn_plan.hpp"

namespace zerolora {
namespace {

using cuda_test::CudaBackend;
using cuda_test::random_values;

// ---- host-side: the column-major GEMM problem of a row-major view -------------------------

TEST(CudaGemmKey, RowMajorProductIsTheTransposedColumnMajorOne) {
  alignas(256) static float a[64 * 64], b[64 * 64], c[64 * 64];
  // base forward y[M, out] = x[M, in] W^T: W [out, in] row-major, used transposed
  const Index M = 37, in = 64, out = 48;
  auto key = cuda::gemm_key(a, M, in, in, 1, b, in, out, 1, in, c, M, out, out, 1, 0, 4, false);
  EXPECT_EQ(key.m, out);
  EXPECT_EQ(key.n, M);
  EXPECT_EQ(key.k, in);
  EXPECT_TRUE(key.trans_a);  // W^T view is column-major [in, out]: cuBLASLt transposes it back
  EXPECT_EQ(key.lda, in);
  EXPECT_FALSE(key.trans_b);  // x row-major = column-major x^T
  EXPECT_EQ(key.ldb, in);
  EXPECT_EQ(key.ldc, out);
  // backward data dx[M, in] = dy[M, out] W[out, in]
  key = cuda::gemm_key(a, M, out, out, 1, b, out, in, in, 1, c, M, in, in, 1, 1, 2, false);
  EXPECT_FALSE(key.trans_a);
  EXPECT_FALSE(key.trans_b);
  EXPECT_EQ(key.m, in);
  EXPECT_EQ(key.lda, in);
  EXPECT_EQ(key.ldb, out);
  // dB[out, r] += dy^T z: dy a strided block of a wider buffer, used transposed
  key = cuda::gemm_key(a, out, M, 1, 3 * out, b, M, 4, 4, 1, c, out, 4, 4, 1, 0, 4, true);
  EXPECT_TRUE(key.trans_b);
  EXPECT_EQ(key.ldb, 3 * out);
  EXPECT_TRUE(key.accumulate);
}

TEST(CudaGemmKey, RefusesViewsThatAreNeitherRowNorColumnMajor) {
  alignas(256) static float a[1024], b[1024], c[1024];
  EXPECT_THROW(cuda::gemm_key(a, 4, 4, 8, 2, b, 4, 4, 4, 1, c, 4, 4, 4, 1, 0, 4, false),
               ShapeError);
  EXPECT_THROW(cuda::gemm_key(a, 4, 5, 5, 1, b, 4, 4, 4, 1, c, 4, 4, 4, 1, 0, 4, false),
               ShapeError);  // shapes do not chain
  EXPECT_EQ(cuda::pointer_alignment(a), 256);
  EXPECT_EQ(cuda::pointer_alignment(a + 1), 4);
  EXPECT_EQ(cuda::pointer_alignment(a + 2), 8);
}

#ifdef ZEROLORA_CUDNN
// The cuDNN graph cache's keys, and the graphs themselves validated for Hopper on the host: the
// frontend checks every rule of its support surface (ragged offsets with the padding mask, GQA
// with ragged offsets, head sizes, stride alignment) without a GPU.
TEST(CudnnAttentionGraphs, KeysBucketShapesSoTheCacheStaysSmall) {
  const AttentionShape shape{32, 8, 128};
  const std::vector<Segment> three{{0, 100}, {100, 20}, {120, 8}};
  const auto a = cuda::sdpa_key(false, three, 128, shape);
  const auto b = cuda::sdpa_key(false, {{0, 3}, {3, 120}, {123, 3}, {126, 2}}, 128, shape);
  EXPECT_EQ(a, b) << "batches of the same bucket share a graph";
  EXPECT_EQ(a.slots, 4);
  EXPECT_EQ(a.max_length, 128);
  EXPECT_EQ(a.total_tokens, 0) << "the forward graph does not depend on the token count";
  EXPECT_EQ(a.call_kv_heads, 8) << "a key covers all heads unless the calls split them";
  std::vector<Segment> many;
  for (Index s = 0; s < 9; ++s) many.push_back({s * 300, 300});
  const auto c = cuda::sdpa_key(true, many, 2700, shape);
  EXPECT_EQ(c.slots, 10);
  EXPECT_EQ(c.max_length, 384);
  EXPECT_EQ(c.total_tokens, 3072) << "2700 tokens: 2048's quarter steps";
  EXPECT_EQ(cudnn_size_bucket(1), 128);
  EXPECT_EQ(cudnn_size_bucket(129), 256);
  EXPECT_EQ(cudnn_size_bucket(513), 640);
  EXPECT_EQ(cudnn_size_bucket(2048), 2048);
  EXPECT_EQ(cudnn_size_bucket(2049), 2560);
  EXPECT_TRUE(c.backward);
  // The atomic backward's accumulator spans the token bound: the padded rows, past the offset
  // of an unused slot (M) and a tile's reach beyond the last token; the forward has no such key.
  const auto atomic = cuda::sdpa_key(true, many, 2700, shape, cuda::CudnnBackward::kAtomic);
  EXPECT_EQ(atomic.total_tokens, cudnn_padded_rows(2700));
  EXPECT_EQ(atomic.total_tokens, 3072 + 256);
  EXPECT_NE(atomic, c) << "each backward its own graph";
  EXPECT_EQ(cuda::sdpa_key(false, three, 128, shape, cuda::CudnnBackward::kAtomic), a)
      << "the forward is the same graph whichever backward follows";
  // A sliding window enters the key only where it cuts a segment.
  EXPECT_EQ(cuda::sdpa_key(false, three, 128, AttentionShape{32, 8, 128, 100}), a);
  EXPECT_EQ(cuda::sdpa_key(false, three, 128, AttentionShape{32, 8, 128, 99}).window, 99);
  EXPECT_FALSE(cuda::cudnn_attention_supports({8, 4, 12}));
  EXPECT_TRUE(cuda::cudnn_attention_supports({8, 4, 8}));
  EXPECT_FALSE(cudnn_supports_head_dim(264)) << "cuDNN takes head sizes up to 256";
  // Slots: a power of two up to 8, then quarter steps of one (within 25% of the segments).
  for (const auto& [segments, slots] : std::vector<std::pair<Index, Index>>{{1, 1},
                                                                            {2, 2},
                                                                            {3, 4},
                                                                            {5, 8},
                                                                            {8, 8},
                                                                            {9, 10},
                                                                            {11, 12},
                                                                            {16, 16},
                                                                            {17, 20},
                                                                            {33, 40},
                                                                            {88, 96},
                                                                            {129, 160}})
    EXPECT_EQ(cudnn_slot_count(segments), slots) << segments << " segments";
  // The three ragged-offset arrays start 16-byte aligned: slots + 1 entries rounded up to even.
  for (const Index slots : {8, 16, 128}) EXPECT_EQ(cuda::offsets_span(slots) % 2, 0u);
  EXPECT_EQ(cuda::offsets_span(8), 10u);
}

TEST(CudnnAttentionGraphs, ForwardAndBackwardValidateForHopper) {
  // The demo model, a 7B (MHA), the 70B's GQA layer, Llama 3's 8B, Mistral 7B v0.1's sliding
  // window (4096 there; 256 here, to cut the batch's segments), Qwen2.5's 0.5B (14 heads: the
  // statistics' rows 56 bytes apart), 1.5B, 7B and 14B/32B.
  for (const AttentionShape shape :
       {AttentionShape{8, 4, 8}, AttentionShape{32, 32, 128}, AttentionShape{64, 8, 128},
        AttentionShape{32, 8, 128}, AttentionShape{32, 8, 128, 256}, AttentionShape{14, 2, 64},
        AttentionShape{12, 2, 128}, AttentionShape{28, 4, 128}, AttentionShape{40, 8, 128}})
    for (bool backward : {false, true})
      for (const auto algorithm :
           {cuda::CudnnBackward::kDeterministic, cuda::CudnnBackward::kAtomic,
            cuda::CudnnBackward::kAtomicDenseGradients}) {
        const auto key =
            cuda::sdpa_key(backward, {{0, 1}, {1, 500}, {501, 1547}}, 2048, shape, algorithm);
        EXPECT_EQ(cuda::validate_sdpa_graph(key), "")
            << (backward ? "backward " : "forward ") << cuda::cudnn_backward_name(algorithm)
            << " H=" << shape.heads << " KV=" << shape.kv_heads << " hd=" << shape.head_dim
            << " window=" << shape.window;
      }
  // The deterministic backward's groups of heads (here one KV head's: a cap of 0): the layer's
  // strides, the group's heads.
  for (const AttentionShape shape :
       {AttentionShape{32, 32, 128}, AttentionShape{64, 8, 128}, AttentionShape{28, 4, 128},
        AttentionShape{40, 8, 128}, AttentionShape{8, 4, 64}, AttentionShape{14, 2, 64}})
    for (const auto& call : cuda::sdpa_backward_calls({{0, 1}, {1, 500}, {501, 1547}}, 2048, shape,
                                                      cuda::CudnnBackward::kDeterministic, 0.0))
      if (call.kv_head_first == 0) {
        EXPECT_EQ(cuda::validate_sdpa_graph(call.key), "")
            << "H=" << shape.heads << " KV=" << shape.kv_heads << " (" << call.key.call_kv_heads
            << " per call)";
      }
  // and it does refuse: a head size cuDNN does not take (not a multiple of 8).
  const auto odd = cuda::sdpa_key(false, {{0, 64}}, 64, AttentionShape{4, 2, 12});
  EXPECT_NE(cuda::validate_sdpa_graph(odd), "");
}

// The deterministic backward's calls: one over the whole batch where the segments are about
// equal (every benchmark, and --dataset_concatenation's rows), groups of consecutive segments
// within the dP budget where one long document sits among many short ones (--packing
// boundaries), groups of heads within the cap, and estimate-memory's bound above every call.
TEST(CudnnAttentionGraphs, DeterministicBackwardGroupsSegmentsWithinItsWorkspaceBudget) {
  auto equal = [](Index n, Index length) {
    std::vector<Segment> segments;
    for (Index s = 0; s < n; ++s) segments.push_back({s * length, length});
    return segments;
  };
  using Groups = std::vector<SegmentRange>;
  const double gib = 1073741824.0, cap = gib, no_cap = 1e30;
  const AttentionShape mha{32, 32, 128}, gqa70{64, 8, 128}, llama3{32, 8, 128};
  EXPECT_EQ(cudnn_backward_groups(equal(4, 2048), 8192, mha, cap), (Groups{{0, 4}}));
  EXPECT_EQ(cudnn_backward_groups(equal(10, 2048), 20480, gqa70, cap), (Groups{{0, 10}}));
  EXPECT_EQ(cudnn_backward_groups(equal(88, 232), 88 * 232, mha, cap), (Groups{{0, 88}}));
  EXPECT_EQ(cudnn_backward_groups(equal(9, 910), 9 * 910, mha, cap), (Groups{{0, 9}}))
      << "equal segments whose bucket (1024) is longer: still one call";
  EXPECT_EQ(cudnn_dp_bytes_bound(8192, 2048, mha, cap), gib) << "the 7B benchmark's: the cap";
  EXPECT_EQ(cudnn_dp_bytes_bound(20480, 2048, gqa70, cap), gib) << "the 70B stack's";
  EXPECT_GT(cudnn_dp_bytes_bound(20480, 2048, gqa70, no_cap), 5 * gib)
      << "uncapped: 10 slots of 2048^2 and more, 64 heads";
  EXPECT_EQ(cudnn_dp_bytes_bound(20480, 2048, {28, 4, 128}, 0.0), cudnn_dp_bytes(2048 * 2048, 7))
      << "Qwen2.5-7B's 7 query heads per KV head: one KV head a call (the statistics' slices "
         "off a 16-byte boundary read from an aligned copy); at a cap of 0 its segments go one "
         "by one";
  EXPECT_EQ(cudnn_dp_bytes_bound(32768, 32768, llama3, cap), cudnn_dp_bytes(32768 * 32768, 4))
      << "Llama 3 8B at 32768 tokens: one slot of 32768^2 at 4 query heads, 8 GiB";
  // A long document that passes the cap even at the fewest heads takes no short one into its
  // call (each would get a slot of its S^2); the short ones go together.
  std::vector<Segment> long_first{{0, 30000}};
  for (Index s = 0; s < 11; ++s) long_first.push_back({30000 + 250 * s, 250});
  EXPECT_EQ(cudnn_backward_groups(long_first, 32750, llama3, cap), (Groups{{0, 1}, {1, 12}}));
  EXPECT_EQ(cudnn_backward_groups(long_first, 32750, llama3, no_cap), (Groups{{0, 2}, {2, 12}}))
      << "uncapped, the budget alone: two slots of 32768^2";
  // Batches of --packing boundaries on Alpaca-like records (documents of 40 to 798 tokens) and
  // of long documents among short ones, under several caps: every group in order, within its
  // batch's budget, and at the fewest heads within the cap or one slot of its longest; every
  // call's heads within the cap where fewer were allowed; every call within the bound.
  std::mt19937 gen(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<Segment> segments;
    Index M = 0;
    const Index rows = 1 + static_cast<Index>(gen() % 10);
    while (M < rows * 2048 - 900) {
      const Index length = trial % 2 ? 40 + static_cast<Index>(gen() % 400)
                                     : (gen() % 30 ? 100 : 2048 - static_cast<Index>(gen() % 300));
      segments.push_back({M, length});
      M += length;
    }
    Index longest = 0;
    for (const auto& seg : segments) longest = std::max(longest, seg.length);
    const Index budget = cudnn_dp_budget(M, longest);
    for (const AttentionShape& shape : {mha, gqa70})
      for (const double trial_cap : {0.0, 0.03 * gib, 0.25 * gib, cap}) {
        SCOPED_TRACE("trial " + std::to_string(trial) + " H=" + std::to_string(shape.heads) +
                     " cap " + std::to_string(trial_cap));
        const Index fewest = cudnn_fewest_query_heads(shape);
        const Groups groups = cudnn_backward_groups(segments, M, shape, trial_cap);
        std::size_t next = 0;
        for (const auto& group : groups) {
          ASSERT_EQ(group.first, next) << "in order, none skipped";
          ASSERT_LT(group.first, group.last);
          Index group_longest = 0;
          for (std::size_t i = group.first; i < group.last; ++i)
            group_longest = std::max(group_longest, segments[i].length);
          const Index S = cudnn_size_bucket(group_longest);
          const Index slots_s2 =
              cudnn_slot_count(static_cast<Index>(group.last - group.first)) * S * S;
          EXPECT_LE(slots_s2, budget);
          EXPECT_LE(cudnn_dp_bytes(slots_s2, fewest),
                    std::max(trial_cap, cudnn_dp_bytes(S * S, fewest)));
          next = group.last;
        }
        EXPECT_EQ(next, segments.size());
        const double bound = cudnn_dp_bytes_bound(M, 2048, shape, trial_cap);
        for (const auto& call : cuda::sdpa_backward_calls(
                 segments, M, shape, cuda::CudnnBackward::kDeterministic, trial_cap)) {
          const Index heads = call.key.call_kv_heads * (shape.heads / shape.kv_heads);
          const double bytes =
              cudnn_dp_bytes(call.key.slots * call.key.max_length * call.key.max_length, heads);
          EXPECT_LE(bytes, bound);
          if (bytes > trial_cap) {
            EXPECT_EQ(call.key.call_kv_heads, 1) << "then one KV head";
          }
        }
      }
  }
  // One long document among 100 short ones: one call would take 128 slots of 2048^2; the
  // groups take at most what 6 segments of 2048 would (8 slots).
  std::vector<Segment> mixed{{0, 100}, {100, 2048}};
  for (Index s = 0; s < 99; ++s) mixed.push_back({2148 + s * 100, 100});
  const Index M = 2148 + 99 * 100;
  EXPECT_EQ(cudnn_dp_budget(M, 2048), 8 * 2048 * 2048);
  const Groups groups = cudnn_backward_groups(mixed, M, gqa70, cap);
  EXPECT_EQ(groups.front(), (SegmentRange{0, 8})) << "the long one with 7 short ones";
  EXPECT_EQ(groups.size(), 2u) << "the other 93 in one call of 96 slots of 128^2";
}

// The heads per call: the most KV heads (with their query heads) dividing the layer's whose dP
// is within the cap, else one; a call whose statistics' slice starts off a 16-byte boundary
// reads an aligned copy.
TEST(CudnnAttentionGraphs, HeadsSplitOnlyWhereTheirWorkspacePassesTheCap) {
  const double gib = 1073741824.0;
  const Index one_8192 = 8192 * 8192;  // one sequence of 8192 tokens: one slot
  EXPECT_EQ(cudnn_kv_heads_per_call(one_8192, {32, 8, 128}, gib), 2)
      << "Llama 3 8B: 8 query heads, 1 GiB (all 32: 4 GiB)";
  EXPECT_EQ(cudnn_kv_heads_per_call(one_8192, {32, 8, 128}, 4 * gib), 8);
  EXPECT_EQ(cudnn_kv_heads_per_call(one_8192, {32, 8, 128}, 0.0), 1) << "the fewest: one";
  EXPECT_EQ(cudnn_kv_heads_per_call(one_8192, {32, 32, 128}, 0.0), 1) << "MHA: one head";
  EXPECT_EQ(cudnn_kv_heads_per_call(one_8192, {32, 32, 128}, 1.5 * gib), 8)
      << "12 heads fit: 8, the most dividing 32";
  EXPECT_EQ(cudnn_kv_heads_per_call(one_8192, {8, 4, 64}, 0.0), 1);
  EXPECT_EQ(cudnn_kv_heads_per_call(one_8192, {28, 4, 128}, gib), 1)
      << "Qwen2.5-7B: 7 query heads per KV head, 0.875 GiB a call (all 28: 3.5 GiB)";
  EXPECT_EQ(cudnn_kv_heads_per_call(one_8192, {28, 4, 128}, 2 * gib), 2);
  EXPECT_EQ(cudnn_kv_heads_per_call(one_8192, {40, 8, 128}, 2 * gib), 2)
      << "Qwen2.5-14B: 5 per KV head; two KV heads 1.25 GiB, three (1.875) do not divide 8";
  EXPECT_EQ(cudnn_kv_heads_per_call(4 * 2048 * 2048, {32, 32, 128}, gib), 32)
      << "the 7B benchmark's 4 x 2048: one call, 1 GiB";
  EXPECT_EQ(cudnn_kv_heads_per_call(10 * 2048 * 2048, {64, 8, 128}, gib), 1)
      << "the seed's 70B at 10 x 2048: 8 calls of 8 query heads, 0.625 GiB each";
  // Aligned where the call's first query head is a multiple of 4 (4 bytes each).
  for (Index first = 0; first < 4; ++first) {
    EXPECT_EQ(cudnn_stats_slice_aligned(first, {28, 4, 128}), first % 4 == 0) << first;
    EXPECT_TRUE(cudnn_stats_slice_aligned(first, {32, 8, 128})) << "Llama 3: 4 per KV head";
  }
  EXPECT_TRUE(cudnn_stats_slice_aligned(0, {12, 2, 128}));
  EXPECT_FALSE(cudnn_stats_slice_aligned(1, {12, 2, 128})) << "Qwen2.5-1.5B: 6 per KV head";
  EXPECT_FALSE(cudnn_stats_slice_aligned(1, {32, 32, 128}));
  EXPECT_TRUE(cudnn_stats_slice_aligned(8, {32, 32, 128}));

  // The cap comes from ZEROLORA_CUDNN_DP_WORKSPACE_MIB; a bad value is an error naming it.
  const char* name = "ZEROLORA_CUDNN_DP_WORKSPACE_MIB";
  {
    testing::ScopedEnvironment unset(name, nullptr);
    EXPECT_EQ(cudnn_dp_workspace_cap_from_environment(), gib);
  }
  {
    testing::ScopedEnvironment set(name, "256");
    EXPECT_EQ(cudnn_dp_workspace_cap_from_environment(), 0.25 * gib);
  }
  {
    testing::ScopedEnvironment set(name, "0");
    EXPECT_EQ(cudnn_dp_workspace_cap_from_environment(), 0.0);
  }
  for (const char* bad : {"-1", "1G", "nan", "inf", " "}) {
    testing::ScopedEnvironment set(name, bad);
    try {
      cudnn_dp_workspace_cap_from_environment();
      ADD_FAILURE() << "took " << bad;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(std::string(name) + "=" + bad), std::string::npos)
          << e.what();
    }
  }
}

// What the backward's calls upload: every segment once per group of heads, in its call's slot,
// with its rows' offsets in each layout; unused slots and the end entries at M; every array
// 16-byte aligned; a group's calls over its heads sharing one set of entries.
TEST(CudnnAttentionGraphs, GeometryPutsEverySegmentInOneCallsSlot) {
  const AttentionShape shape{32, 8, 128};
  const Index ld = shape.qkv_stride(), hd = shape.head_dim;
  std::vector<Segment> segments{{0, 2048}};
  for (Index s = 0; s < 64; ++s) segments.push_back({2048 + 32 * s, 32});
  const Index M = 4096;
  // 1 GiB: two calls of all heads; 64 MiB: the first group's (2 slots of 2048^2) in 8 calls of
  // one KV head each (4 query heads, 64 MiB), the second's (64 slots of 128^2) in one.
  for (const auto& [cap, call_count] : {std::pair{1073741824.0, 2u}, std::pair{67108864.0, 9u}}) {
    const auto calls =
        cuda::sdpa_backward_calls(segments, M, shape, cuda::CudnnBackward::kDeterministic, cap);
    ASSERT_EQ(calls.size(), call_count);
    EXPECT_EQ(calls[0].key.slots, 2) << "the long one and one short one";
    EXPECT_EQ(calls[0].key.max_length, 2048);
    EXPECT_EQ(calls.back().key.slots, 64) << "63 segments";
    EXPECT_EQ(calls.back().key.max_length, 128);
    const cuda::SdpaGeometry g = cuda::sdpa_geometry(calls, segments, M);
    std::vector<std::vector<int>> seen(segments.size(), std::vector<int>(shape.kv_heads, 0));
    for (std::size_t c = 0; c < calls.size(); ++c) {
      const auto& call = calls[c];
      const std::size_t span = cuda::offsets_span(call.key.slots);
      EXPECT_EQ(g.seq_len_at[c] % 4, 0u) << "16-byte aligned lengths";
      EXPECT_EQ(g.offsets_at[c] % 2, 0u) << "16-byte aligned offsets";
      ASSERT_LE(call.kv_head_first + call.key.call_kv_heads, shape.kv_heads);
      for (Index b = 0; b <= call.key.slots; ++b) {
        const std::size_t index = call.segments.first + static_cast<std::size_t>(b);
        const bool used = b < call.key.slots && index < call.segments.last;
        const Index begin = used ? segments[index].begin : M;
        if (b < call.key.slots) {
          EXPECT_EQ(g.seq_len[g.seq_len_at[c] + b], used ? segments[index].length : 0);
        }
        const std::int64_t* offsets = g.offsets.data() + g.offsets_at[c];
        EXPECT_EQ(offsets[b], begin * ld);
        EXPECT_EQ(offsets[span + b], begin * shape.heads * hd);
        EXPECT_EQ(offsets[2 * span + b], begin * shape.heads);
        EXPECT_EQ(offsets[3 * span + b], begin * shape.kv_heads * hd);
        if (used)
          for (Index h = 0; h < call.key.call_kv_heads; ++h) ++seen[index][call.kv_head_first + h];
      }
    }
    for (std::size_t i = 0; i < seen.size(); ++i)
      for (Index h = 0; h < shape.kv_heads; ++h)
        EXPECT_EQ(seen[i][h], 1) << "segment " << i << " KV head " << h << " cap " << cap;
    EXPECT_EQ(g.seq_len.size(), 4u + 64u) << "one set of entries per group of segments";
    EXPECT_EQ(g.offsets.size(), 4 * cuda::offsets_span(2) + 4 * cuda::offsets_span(64));
  }
  // The forward and the atomic backward: one call over the whole batch and all heads.
  EXPECT_EQ(cuda::sdpa_forward_calls(segments, M, shape).size(), 1u);
  const auto atomic =
      cuda::sdpa_backward_calls(segments, M, shape, cuda::CudnnBackward::kAtomic, 0.0);
  ASSERT_EQ(atomic.size(), 1u);
  EXPECT_EQ(atomic[0].key.slots, 80) << "65 segments";
  EXPECT_EQ(atomic[0].key.call_kv_heads, shape.kv_heads);
  EXPECT_EQ(atomic[0].segments, (SegmentRange{0, segments.size()}));
}

// ZEROLORA_CUDNN_BACKWARD picks the backward (the device check compares them); the default is
// the deterministic one, and a misspelt value is an error naming the variable, not a default.
TEST(CudnnAttentionGraphs, BackwardChosenByTheEnvironment) {
  const char* name = "ZEROLORA_CUDNN_BACKWARD";
  {
    testing::ScopedEnvironment unset(name, nullptr);
    EXPECT_EQ(cuda::cudnn_backward_from_environment(), cuda::CudnnBackward::kDeterministic);
  }
  {
    testing::ScopedEnvironment set(name, "atomic");
    EXPECT_EQ(cuda::cudnn_backward_from_environment(), cuda::CudnnBackward::kAtomic);
    EXPECT_TRUE(cuda::fused_gradients(cuda::CudnnBackward::kAtomic));
  }
  {
    testing::ScopedEnvironment set(name, "atomic_dense_gradients");
    EXPECT_EQ(cuda::cudnn_backward_from_environment(), cuda::CudnnBackward::kAtomicDenseGradients);
    EXPECT_FALSE(cuda::fused_gradients(cuda::CudnnBackward::kAtomicDenseGradients));
  }
  testing::ScopedEnvironment set(name, "fast");
  try {
    cuda::cudnn_backward_from_environment();
    ADD_FAILURE() << "a bad value was taken";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("ZEROLORA_CUDNN_BACKWARD=fast"), std::string::npos)
        << e.what();
  }
}
#endif

#ifdef ZEROLORA_CUDNN
// On a GPU, cuDNN's fused attention must take the shapes the recipe trains (else the backend
// quietly falls back to its reference kernel, and every bf16 result above would come from it):
// Llama-2-7B's and the 70B's (GQA) heads, Llama 3's, Mistral's window, Qwen2.5-7B's and
// -0.5B's 7 query heads per KV head (the attention test's shape), at the seed's 2048 tokens
// packed several sequences to a batch.
TEST_F(CudaBackend, CudnnTakesTheRecipesAttentionShapes) {
  const std::vector<Segment> segments{{0, 1}, {1, 500}, {501, 1547}, {2048, 2048}};
  // and --packing boundaries' batches: one long document among many short ones, whose
  // deterministic backward runs in two calls (two graphs).
  std::vector<Segment> long_among_short{{0, 2048}};
  for (Index s = 0; s < 64; ++s) long_among_short.push_back({2048 + 32 * s, 32});
  ASSERT_EQ(cudnn_backward_groups(long_among_short, 4096, {64, 8, 128}, 1073741824.0).size(), 2u);
  // By default, then with a cap of 0 on the deterministic backward's dP, which splits every
  // call into one KV head's heads: graphs whose O, dO and gradients have a row stride
  // wider than their heads, which cuDNN must take too (else the kernels would quietly use the
  // reference kernel, and the attention tests would prove nothing of them).
  for (const char* cap : {static_cast<const char*>(nullptr), "0"}) {
    testing::ScopedEnvironment cap_set("ZEROLORA_CUDNN_DP_WORKSPACE_MIB", cap);
    cuda::CudnnAttention cudnn(device(), dynamic_cast<cuda::CudaDevice&>(device()).stream());
    EXPECT_EQ(cudnn.dp_workspace_cap(), cap ? 0.0 : 1073741824.0);
    for (const auto& batch : {segments, long_among_short})
      for (const AttentionShape shape :
           {AttentionShape{32, 32, 128}, AttentionShape{64, 8, 128}, AttentionShape{32, 8, 128},
            AttentionShape{32, 8, 128, 256}, AttentionShape{28, 4, 128}, AttentionShape{14, 2, 64}})
        EXPECT_TRUE(cudnn.available(batch, 4096, shape))
            << "H=" << shape.heads << " KV=" << shape.kv_heads << " window=" << shape.window
            << " segments " << batch.size() << " cap " << (cap ? cap : "default");
    // Llama 3 8B on one sequence of 8192 tokens: 4 calls of 8 heads by default.
    EXPECT_TRUE(cudnn.available({{0, 8192}}, 8192, AttentionShape{32, 8, 128}));
    for (const auto& refusal : cudnn.refusals()) ADD_FAILURE() << "cuDNN refused " << refusal;
  }
}
#endif

// NCCL_COMM_BLOCKING=0 would make every collective return ncclInProgress: refused up front,
// naming the variable, before NCCL is touched.
TEST_F(CudaBackend, NonblockingNcclIsRefusedUpFront) {
  auto& gpu_device = dynamic_cast<cuda::CudaDevice&>(device());
  const auto bootstrap = make_local_communicator();
  ::setenv("NCCL_COMM_BLOCKING", "0", 1);
  try {
    cuda::make_nccl_communicator(gpu_device, *bootstrap, 60);
    ADD_FAILURE() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("NCCL_COMM_BLOCKING"), std::string::npos) << e.what();
  }
  ::unsetenv("NCCL_COMM_BLOCKING");
}

// GEMM plans are cached per shape, and the cache starts afresh when full (unpacked batches give
// a new M nearly every step): bounded, and every product still right.
TEST_F(CudaBackend, TheGemmPlanCacheStaysBounded) {
  auto& gpu_device = dynamic_cast<cuda::CudaDevice&>(device());
  cuda::LtGemm gemm(gpu_device, gpu_device.stream(), 8);
  const Index K = 5, N = 3;
  const auto b = random_values(K * N, 41);
  const float* gb = on_gpu(b);
  for (Index M = 1; M <= 20; ++M) {
    const auto a = random_values(M * K, 42 + M);
    float* gc = on_gpu(std::vector<float>(static_cast<std::size_t>(M * N)));
    gemm.matmul(Mat<const float>::dense(on_gpu(a), M, K), Mat<const float>::dense(gb, K, N),
                Mat<float>::dense(gc, M, N), 1.0f, false);
    EXPECT_LE(gemm.cached_plans(), 8u);
    std::vector<float> expected(static_cast<std::size_t>(M * N), 0.0f);
    for (Index i = 0; i < M; ++i)
      for (Index j = 0; j < N; ++j)
        for (Index k = 0; k < K; ++k) expected[i * N + j] += a[i * K + k] * b[k * N + j];
    expect_close(to_host(gc, expected.size()), expected, "C = A B");
  }
  EXPECT_GT(gemm.cached_plans(), 0u);
}

// The profiler on the GPU's clock: events around each op add up, per kind and part of the
// step, the time the GPU spent in it (the host only launches), nothing for kinds that did not
// run, no more than the wall time; a collect after the last adds nothing, and reset() drops
// the marks.
TEST_F(CudaBackend, TheProfilerTimesEachOpOnTheGpusClock) {
  const Index M = 64, D = 256, I = 96;
  const auto x = random_values(M * D, 31), w = random_values(D, 32);
  const auto gate_up = random_values(M * 2 * I, 33), weight = random_values(D * D, 34);
  float* gx = on_gpu(x);
  float* gw = on_gpu(w);
  float* ggu = on_gpu(gate_up);
  float* gweight = on_gpu(weight);
  float* gy = on_gpu(std::vector<float>(static_cast<std::size_t>(M * D)));
  float* grstd = on_gpu(std::vector<float>(static_cast<std::size_t>(M)));
  float* gs = on_gpu(std::vector<float>(static_cast<std::size_t>(M * I)));
  const std::unique_ptr<DeviceClock> clock = device().make_clock();
  ASSERT_TRUE(clock) << "a GPU times ops on its own clock";
  Profiler& profiler = gpu_->profiler();
  profiler.enable(true);
  profiler.set_device_clock(clock.get());
  const auto start = std::chrono::steady_clock::now();
  for (int repeat = 0; repeat < 3; ++repeat) {
    gpu_kernels_->rmsnorm_forward(gy, grstd, gx, gw, M, D, 1e-5, nullptr);
    gpu_kernels_->linear_forward(Mat<float>::dense(gy, M, D), gx, gweight, D, false);
    ProfilePart once(profiler, StepPart::kOncePerStep);  // (as if it ran once per step)
    gpu_kernels_->swiglu_forward(gs, ggu, M, I, nullptr);
  }
  profiler.collect_device();
  const double wall =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  using C = ProfileCategory;
  for (C kind : {C::kNorm, C::kMatmul, C::kSwiglu}) {
    EXPECT_GT(profiler.device_seconds(kind), 0.0) << profile_category_name(kind);
    EXPECT_EQ(profiler.calls(kind), 3) << profile_category_name(kind);
  }
  for (C kind : {C::kAttention, C::kLora, C::kRope, C::kLoss, C::kConvert})
    EXPECT_EQ(profiler.device_seconds(kind), 0.0) << profile_category_name(kind);
  EXPECT_LE(profiler.total_device_seconds(), wall);
  // Each scope in the part it was opened in.
  EXPECT_DOUBLE_EQ(profiler.device_seconds(StepPart::kOncePerStep),
                   profiler.device_seconds(C::kSwiglu));
  EXPECT_DOUBLE_EQ(profiler.device_seconds(StepPart::kLayers),
                   profiler.device_seconds(C::kNorm) + profiler.device_seconds(C::kMatmul));
  const double total = profiler.total_device_seconds();
  profiler.collect_device();
  EXPECT_EQ(profiler.total_device_seconds(), total) << "each scope is counted once";
  gpu_kernels_->swiglu_forward(gs, ggu, M, I, nullptr);
  profiler.reset();
  profiler.collect_device();
  EXPECT_EQ(profiler.total_device_seconds(), 0.0) << "reset() drops the marks so far";
  profiler.set_device_clock(nullptr);
  profiler.enable(false);
}

}  // namespace
}  // namespace zerolora
