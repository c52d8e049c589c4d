// The CUDA backend's attention against the CPU engine's: over several segments with GQA in fp32
// within kFp32Op; bf16 (cuDNN's fused attention where the build has it, the stand-in's on the
// emulator) within bf16's error; the full recompute's backward taking its forward's copies; RoPE
// and q/k/v's LoRA expansions inside the attention against them beside it; the note of which
// attention runs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/bf16.hpp"
#include "core/profiler.hpp"
#include "cuda/cuda_device.hpp"
#include "cuda/cuda_ops.hpp"
#ifdef ZEROLORA_CUDNN
#include "cuda/cudnn_attention.hpp"
#endif
#include "cuda_backend_test.hpp"
#include "ops/attention.hpp"
#include "ops/cudnn_plan.hpp"
#include "ops/rope.hpp"

namespace zerolora {
namespace {

using cuda_test::attention_backward_repeats;
using cuda_test::CudaBackend;
using cuda_test::random_values;

TEST_F(CudaBackend, AttentionOverSegmentsWithGqaEqualsTheCpu) {
  // Head sizes under, over and not a multiple of the warp's 32 lanes, up to the largest (256);
  // the last two: Mistral's sliding window, cutting the segments of 64 and 33 rows.
  for (const auto& [heads, kv_heads, head_dim, window] :
       std::vector<std::tuple<Index, Index, Index, Index>>{{8, 4, 8, 0},
                                                           {4, 1, 64, 0},
                                                           {6, 2, 128, 0},
                                                           {3, 3, 72, 0},
                                                           {2, 1, 256, 0},
                                                           {8, 4, 8, 7},
                                                           {6, 2, 128, 20}}) {
    const std::vector<Segment> segments{{0, 1}, {1, 17}, {18, 64}, {82, 33}};
    const Index M = 115;
    const AttentionShape shape{heads, kv_heads, head_dim, window};
    auto qkv = random_values(M * shape.qkv_stride(), 16),
         dout = random_values(M * heads * head_dim, 17);
    std::vector<float> out(M * heads * head_dim), lse(heads * M), dqkv(qkv.size());
    float *gqkv = on_gpu(qkv), *gout = on_gpu(out), *glse = on_gpu(lse), *gdqkv = on_gpu(dqkv),
          *gdout = on_gpu(dout);
    AttentionOptions options;
    cpu_kernels_->attention_forward(out.data(), nullptr, lse.data(), qkv.data(), segments, M, shape,
                                    options, nullptr, nullptr);
    gpu_kernels_->attention_forward(gout, nullptr, glse, gqkv, segments, M, shape, options, nullptr,
                                    nullptr);
    expect_close(to_host(gout, out.size()), out, "attention out");
    expect_close(to_host(glse, lse.size()), lse, "attention lse");
    cpu_kernels_->attention_backward(dqkv.data(), nullptr, dout.data(), qkv.data(), out.data(),
                                     lse.data(), segments, M, shape, options, nullptr,
                                     AttentionInputs::kAny);
    gpu_kernels_->attention_backward(gdqkv, nullptr, gdout, gqkv, gout, glse, segments, M, shape,
                                     options, nullptr, AttentionInputs::kAny);
    expect_close(to_host(gdqkv, dqkv.size()), dqkv, "attention d qkv");
  }
}

// The bf16 policy's attention on the GPU (cuDNN's fused kernel where it takes the shape) against
// the CPU's bf16 attention: both round q, k, v to bf16, cuDNN also P and its outputs, so they
// agree to bf16 precision, compared as relative norms.
// The relative norm of a - b against b's.
double norm_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, ref = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    ref += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(diff / ref);
}

TEST_F(CudaBackend, Bf16AttentionEqualsTheCpuWithinBf16) {
  Runtime& gpu = *gpu_;
  CpuKernels<Bf16Policy> cpu_bf16(cpu_);
  // The third shape: Mistral's sliding window of 100 (cuDNN's diagonal band), cutting three
  // segments. The fourth batch, one segment alone, takes one slot; three segments leave cuDNN
  // one empty (length 0) slot of four. The fifth, one long segment among 40 short ones
  // (--packing boundaries), takes the deterministic backward two calls (ops/cudnn_plan.hpp,
  // cudnn_backward_groups).
  const std::vector<Segment> packed{{0, 1}, {1, 130}, {131, 300}, {431, 81}}, alone{{0, 200}},
      three{{0, 50}, {50, 300}, {350, 7}};
  // Then the same the other way round: the second call needs the larger workspace.
  std::vector<Segment> long_among_short{{0, 600}}, short_then_long;
  for (Index s = 0; s < 40; ++s) {
    long_among_short.push_back({600 + 16 * s, 16});
    short_then_long.push_back({16 * s, 16});
  }
  short_then_long.push_back({640, 600});
  const double default_cap = 1073741824.0;
  ASSERT_EQ(
      cudnn_backward_groups(long_among_short, 600 + 40 * 16, {16, 4, 128}, default_cap).size(), 2u);
  ASSERT_EQ(cudnn_backward_groups(short_then_long, 600 + 40 * 16, {16, 4, 128}, default_cap),
            (std::vector<SegmentRange>{{0, 40}, {40, 41}}));
  // Each twice: as the run does by default, then with a cap of 0 on the deterministic
  // backward's dP (ZEROLORA_CUDNN_DP_WORKSPACE_MIB, read when the kernels make their cuDNN
  // object), which runs it a segment at a time and a KV head at a time: 2 query heads a call in
  // the first shape, 7 in Qwen2.5-0.5B's, 4 in the others; in the first two, calls from an odd
  // KV head find their statistics off a 16-byte boundary and read an aligned copy. (Once
  // without cuDNN, the emulator's build, and with the atomic backward, which the cap does not
  // split.)
  std::vector<const char*> caps{nullptr};
#ifdef ZEROLORA_CUDNN
  if (cuda::cudnn_backward_from_environment() == cuda::CudnnBackward::kDeterministic)
    caps.push_back("0");
#endif
  for (const char* cap : caps) {
    testing::ScopedEnvironment cap_set("ZEROLORA_CUDNN_DP_WORKSPACE_MIB", cap);
    auto gpu_bf16 = make_kernels<Bf16Policy>(gpu);
    for (const auto& [shape, segments] :
         std::vector<std::pair<AttentionShape, std::vector<Segment>>>{
             {{8, 4, 64}, packed},
             {{14, 2, 64}, packed},
             {{16, 4, 128}, packed},
             {{16, 4, 128, 100}, packed},
             {{16, 4, 128}, alone},
             {{16, 4, 128}, three},
             {{16, 4, 128}, long_among_short},
             {{16, 4, 128}, short_then_long}}) {
      SCOPED_TRACE(std::string("dP cap ") + (cap ? cap : "default") +
                   " MiB, H=" + std::to_string(shape.heads) + ", " +
                   std::to_string(segments.size()) + " segments");
      if (cap) {
        ASSERT_LT(cudnn_kv_heads_per_call(1, shape, 0.0), shape.kv_heads) << "heads split";
      }
      const Index M = segments.back().begin + segments.back().length;
      auto qkv = random_values(M * shape.qkv_stride(), 19, 2.0f);
      auto dout = random_values(M * shape.heads * shape.head_dim, 20);
      std::vector<float> out(M * shape.heads * shape.head_dim), lse(shape.heads * M),
          dqkv(qkv.size());
      float *gqkv = on_gpu(qkv), *gout = on_gpu(out), *glse = on_gpu(lse), *gdqkv = on_gpu(dqkv),
            *gdout = on_gpu(dout);
      AttentionOptions options;
      bf16* gout_rounded = on_gpu(std::vector<bf16>(out.size()));
      cpu_bf16.attention_forward(out.data(), nullptr, lse.data(), qkv.data(), segments, M, shape,
                                 options, nullptr, nullptr);
      gpu_bf16->attention_forward(gout, gout_rounded, glse, gqkv, segments, M, shape, options,
                                  nullptr, nullptr);
      const std::vector<float> gpu_out = to_host(gout, out.size());
      EXPECT_LT(norm_error(gpu_out, out), 1e-2) << "out hd=" << shape.head_dim;
      expect_rounding_of(to_host(gout_rounded, out.size()), gpu_out, "attention out");
      cpu_bf16.attention_backward(dqkv.data(), nullptr, dout.data(), qkv.data(), out.data(),
                                  lse.data(), segments, M, shape, options, nullptr,
                                  AttentionInputs::kAny);
      gpu_bf16->attention_backward(gdqkv, nullptr, gdout, gqkv, gout, glse, segments, M, shape,
                                   options, nullptr, AttentionInputs::kAny);
      const std::vector<float> first = to_host(gdqkv, dqkv.size());
      EXPECT_LT(norm_error(first, dqkv), 2e-2) << "dqkv hd=" << shape.head_dim;
      // The same bits again (cuDNN's deterministic backward: a resumed run repeats the
      // uninterrupted one), after a pass over other data has used the workspace; the atomic
      // backward (ZEROLORA_CUDNN_BACKWARD, tried by the GPU check) repeats to rounding only.
      float* gother = on_gpu(random_values(dout.size(), 21));
      gpu_bf16->attention_backward(gdqkv, nullptr, gother, gqkv, gout, glse, segments, M, shape,
                                   options, nullptr, AttentionInputs::kAny);
      gpu_bf16->attention_backward(gdqkv, nullptr, gdout, gqkv, gout, glse, segments, M, shape,
                                   options, nullptr, AttentionInputs::kAny);
      const std::vector<float> again = to_host(gdqkv, dqkv.size());
      if (attention_backward_repeats())
        EXPECT_EQ(again, first) << "backward repeated, hd=" << shape.head_dim;
      else
        EXPECT_LT(norm_error(again, dqkv), 2e-2) << "backward repeated, hd=" << shape.head_dim;
    }
  }
}

// The backward right after its forward (the full recompute's), told so, takes the copies of
// q/k/v, O and the statistics that the forward left in cuDNN's buffers: the same gradients as
// the backward that makes its own copies (the same bits where cuDNN's backward is
// deterministic). Told so wrongly (after a forward of other arguments, or one through the
// reference kernel), the backend names the caller's bug rather than read stale copies.
TEST_F(CudaBackend, AttentionBackwardAfterItsForwardEqualsTheOneThatCopies) {
  auto gpu_bf16 = make_kernels<Bf16Policy>(*gpu_);
  const std::vector<Segment> segments{{0, 1}, {1, 130}, {131, 300}, {431, 81}};
  const Index M = 512;
  const AttentionShape shape{16, 4, 128};
  const auto width = static_cast<std::size_t>(M * shape.heads * shape.head_dim);
  auto qkv = random_values(M * shape.qkv_stride(), 19, 2.0f);
  float *gqkv = on_gpu(qkv), *gout = on_gpu(std::vector<float>(width)),
        *glse = on_gpu(std::vector<float>(static_cast<std::size_t>(shape.heads * M))),
        *gdout = on_gpu(random_values(width, 20)), *gdqkv = on_gpu(std::vector<float>(qkv.size()));
  AttentionOptions options;
  auto backward = [&](AttentionInputs from) {
    gpu_bf16->attention_backward(gdqkv, nullptr, gdout, gqkv, gout, glse, segments, M, shape,
                                 options, nullptr, from);
    return to_host(gdqkv, qkv.size());
  };
  gpu_bf16->attention_forward(gout, nullptr, glse, gqkv, segments, M, shape, options, nullptr,
                              nullptr);
  const std::vector<float> reusing = backward(AttentionInputs::kLastForwards);
  const std::vector<float> copying = backward(AttentionInputs::kAny);
#ifdef ZEROLORA_CUDNN
  if (attention_backward_repeats()) {
    EXPECT_EQ(reusing, copying);
    // (The copying backward leaves the copies of its own arguments, as a forward would.)
    EXPECT_EQ(backward(AttentionInputs::kLastForwards), copying) << "after the copying backward";
  } else {
    EXPECT_LT(norm_error(reusing, copying), 1e-2) << "the atomic backward repeats to rounding";
  }
  float* gother_qkv = on_gpu(random_values(qkv.size(), 22, 2.0f));
  gpu_bf16->attention_forward(gout, nullptr, glse, gother_qkv, segments, M, shape, options, nullptr,
                              nullptr);
  EXPECT_THROW(backward(AttentionInputs::kLastForwards), InternalError) << "other arguments";
  options.fused = false;  // the reference kernel: cuDNN's buffers no longer the last forward's
  gpu_bf16->attention_forward(gout, nullptr, glse, gqkv, segments, M, shape, options, nullptr,
                              nullptr);
  options.fused = true;
  EXPECT_THROW(backward(AttentionInputs::kLastForwards), InternalError) << "no cuDNN forward";
#else
  EXPECT_EQ(reusing, copying) << "the reference kernel keeps no copies";
#endif
}

// The RoPE tests' batch: four packed segments of 512 rows, one of a single row, and each row's
// position in its segment.
struct RopeTestBatch {
  std::vector<Segment> segments{{0, 1}, {1, 130}, {131, 300}, {431, 81}};
  Index M = 512;
  std::vector<std::int32_t> positions = positions_in(segments, M);

  static std::vector<std::int32_t> positions_in(const std::vector<Segment>& segments, Index M) {
    std::vector<std::int32_t> positions(static_cast<std::size_t>(M));
    for (const Segment& segment : segments)
      for (Index i = 0; i < segment.length; ++i)
        positions[segment.begin + i] = static_cast<std::int32_t>(i);
    return positions;
  }
};

// A RoPE table for head_dim over M positions, and its rotation on each side (the positions on
// the host, and on the GPU).
struct RopeSides {
  RopeTable table;
  RopeRotation host, gpu;
  RopeSides(Index head_dim, Index M, const std::int32_t* host_positions,
            const std::int32_t* gpu_positions)
      : table(RopeParams{}, head_dim), host{host_positions, &table}, gpu{gpu_positions, &table} {
    table.ensure(M);
  }
  RopeSides(const RopeSides&) = delete;
  RopeSides& operator=(const RopeSides&) = delete;
};

// The attention with RoPE inside it, as the layer runs it: the forward that rotates q and k
// first (`rotate`) equals RoPE followed by the forward, and the backward that ends through RoPE
// (`rotated`) and writes its rounding for the projection equals the backward followed by RoPE's
// backward, its rounding that of what it wrote. On the GPU with cuDNN, one pass rotates q and k
// as it copies them to bf16, and one widens cuDNN's gradients, rotates them back and rounds
// (four columns a thread; one where a pointer is off its 16 bytes: the shifted case), in both
// gradient layouts (the stand-in's runs); with the reference kernel (head size 12, or fused
// off), RoPE's own passes. The CPU's equally, and the GPU against it within bf16's error; the
// fp32 policy's (no rounding to write) against the CPU within kFp32Op.
TEST_F(CudaBackend, AttentionThroughRopeEqualsRopeBesideIt) {
  auto gpu_bf16 = make_kernels<Bf16Policy>(*gpu_);
  CpuKernels<Bf16Policy> cpu_bf16(cpu_);
  const auto& [segments, M, positions] = RopeTestBatch{};
  std::int32_t* gpositions = on_gpu(positions);
  struct Case {
    AttentionShape shape;
    bool fused;
    Index shift;
  };
  for (const auto& [shape, fused, shift] : std::vector<Case>{{{16, 4, 128}, true, 0},
                                                             {{16, 4, 128}, true, 1},
                                                             {{8, 8, 64}, true, 0},
                                                             {{4, 2, 12}, true, 0},
                                                             {{16, 4, 128}, false, 0}}) {
    SCOPED_TRACE("H=" + std::to_string(shape.heads) + " hd=" + std::to_string(shape.head_dim) +
                 (fused ? "" : ", fused off") + (shift ? ", shifted" : ""));
    const RopeSides rope(shape.head_dim, M, positions.data(), gpositions);
    const Index W3 = shape.qkv_stride(), width = shape.heads * shape.head_dim;
    const auto n = static_cast<std::size_t>(M * W3);
    const auto qkv = random_values(M * W3, 19, 2.0f), dout = random_values(M * width, 20);
    AttentionOptions options;
    options.fused = fused;

    // The forward: q/k/v (shifted by `shift` values) rotated by the attention, or before it.
    std::vector<float> shifted(n + 1);
    std::copy(qkv.begin(), qkv.end(), shifted.begin() + shift);
    float *gqkv = on_gpu(shifted) + shift, *gqkv_before = on_gpu(qkv);
    float *gout = on_gpu(std::vector<float>(static_cast<std::size_t>(M * width))),
          *glse = on_gpu(std::vector<float>(static_cast<std::size_t>(shape.heads * M)));
    gpu_bf16->rope_rotate_qk(gqkv_before, rope.gpu, M, shape, false);
    gpu_bf16->attention_forward(gout, nullptr, glse, gqkv_before, segments, M, shape, options,
                                nullptr, nullptr);
    const std::vector<float> out_after = to_host(gout, M * width);
    gpu_bf16->attention_forward(gout, nullptr, glse, gqkv, segments, M, shape, options, nullptr,
                                &rope.gpu);
    EXPECT_EQ(to_host(gqkv, n), to_host(gqkv_before, n)) << "q and k rotated in place";
    const std::vector<float> out_through = to_host(gout, M * width);
    EXPECT_EQ(out_through, out_after) << "the forward";
    std::vector<float> cpu_qkv = qkv, cpu_qkv_before = qkv;
    std::vector<float> cpu_out(static_cast<std::size_t>(M * width)), cpu_out_after(cpu_out.size()),
        cpu_lse(static_cast<std::size_t>(shape.heads * M));
    cpu_bf16.rope_rotate_qk(cpu_qkv_before.data(), rope.host, M, shape, false);
    cpu_bf16.attention_forward(cpu_out_after.data(), nullptr, cpu_lse.data(), cpu_qkv_before.data(),
                               segments, M, shape, options, nullptr, nullptr);
    cpu_bf16.attention_forward(cpu_out.data(), nullptr, cpu_lse.data(), cpu_qkv.data(), segments, M,
                               shape, options, nullptr, &rope.host);
    EXPECT_EQ(cpu_qkv, cpu_qkv_before);
    EXPECT_EQ(cpu_out, cpu_out_after);
    EXPECT_LT(norm_error(out_through, cpu_out), 1e-2) << "the forward against the CPU";

    // The backward, into d(q/k/v) and its rounding shifted as q/k/v.
    float* gdout = on_gpu(dout);
    float* gdqkv = on_gpu(std::vector<float>(n + 1)) + shift;
    bf16* gdqkv16 = on_gpu(std::vector<bf16>(n + 1)) + shift;
    gpu_bf16->attention_backward(gdqkv, gdqkv16, gdout, gqkv, gout, glse, segments, M, shape,
                                 options, &rope.gpu, AttentionInputs::kAny);
    const std::vector<float> through = to_host(gdqkv, n);
    expect_rounding_of(to_host(gdqkv16, n), through, "the GPU's rounding");
    gpu_bf16->attention_backward(gdqkv, nullptr, gdout, gqkv, gout, glse, segments, M, shape,
                                 options, nullptr, AttentionInputs::kAny);
    gpu_bf16->rope_rotate_qk(gdqkv, rope.gpu, M, shape, true);
    const std::vector<float> after = to_host(gdqkv, n);
    if (attention_backward_repeats())
      EXPECT_EQ(through, after) << "the backward";
    else
      EXPECT_LT(norm_error(through, after), 1e-2) << "the atomic backward repeats to rounding";
    std::vector<float> cpu_through(n), cpu_after(n);
    std::vector<bf16> cpu_rounded(n);
    cpu_bf16.attention_backward(cpu_through.data(), cpu_rounded.data(), dout.data(), cpu_qkv.data(),
                                cpu_out.data(), cpu_lse.data(), segments, M, shape, options,
                                &rope.host, AttentionInputs::kAny);
    expect_rounding_of(cpu_rounded, cpu_through, "the CPU's rounding");
    cpu_bf16.attention_backward(cpu_after.data(), nullptr, dout.data(), cpu_qkv.data(),
                                cpu_out.data(), cpu_lse.data(), segments, M, shape, options,
                                nullptr, AttentionInputs::kAny);
    cpu_bf16.rope_rotate_qk(cpu_after.data(), rope.host, M, shape, true);
    EXPECT_EQ(cpu_through, cpu_after);
    EXPECT_LT(norm_error(through, cpu_through), 2e-2) << "the backward against the CPU";
  }
  // The fp32 policy: the reference kernel, RoPE's passes beside it.
  const AttentionShape shape{6, 2, 64};
  const RopeSides rope(shape.head_dim, M, positions.data(), gpositions);
  const auto n = static_cast<std::size_t>(M * shape.qkv_stride());
  auto qkv = random_values(M * shape.qkv_stride(), 23);
  auto dout = random_values(M * shape.heads * shape.head_dim, 24);
  std::vector<float> out(dout.size()), lse(shape.heads * M), dqkv(n);
  float *gqkv = on_gpu(qkv), *gout = on_gpu(out), *glse = on_gpu(lse), *gdout = on_gpu(dout),
        *gdqkv = on_gpu(dqkv);
  cpu_kernels_->attention_forward(out.data(), nullptr, lse.data(), qkv.data(), segments, M, shape,
                                  {}, nullptr, &rope.host);
  gpu_kernels_->attention_forward(gout, nullptr, glse, gqkv, segments, M, shape, {}, nullptr,
                                  &rope.gpu);
  expect_close(to_host(gout, out.size()), out, "fp32 attention after RoPE");
  cpu_kernels_->attention_backward(dqkv.data(), nullptr, dout.data(), qkv.data(), out.data(),
                                   lse.data(), segments, M, shape, {}, &rope.host,
                                   AttentionInputs::kAny);
  gpu_kernels_->attention_backward(gdqkv, nullptr, gdout, gqkv, gout, glse, segments, M, shape, {},
                                   &rope.gpu, AttentionInputs::kAny);
  expect_close(to_host(gdqkv, n), dqkv, "fp32 d(q/k/v) through RoPE");
}

// The attention that adds q's, k's and v's LoRA expansions first, as the layer runs it where
// they have adapters (z made beforehand), equals lora_expand on their columns followed by the
// attention, RoPE inside both: q/k/v as they end (every head, v's included, written in place)
// and O, the same bits. On the GPU with cuDNN the expansions are added in the pass that rotates
// and copies q/k/v (four columns a thread; one in the shifted case), with B's columns loaded
// four at a time (rank 4, 8) or one by one (rank 3); a branch without an adapter (k's) is left
// alone. Rank 16 (above what that pass takes), the reference kernel's path (head size 12, fused
// off) and the CPU's run lora_expand first; the GPU against the CPU within bf16's error, and in
// the fp32 policy within kFp32Op.
TEST_F(CudaBackend, AttentionThroughLoraEqualsLoraBesideIt) {
  auto gpu_bf16 = make_kernels<Bf16Policy>(*gpu_);
  CpuKernels<Bf16Policy> cpu_bf16(cpu_);
  const auto& [segments, M, positions] = RopeTestBatch{};
  std::int32_t* gpositions = on_gpu(positions);
  // Module i's z [M, rank] and B [its columns, rank] (none for k where `no_k`), on both sides.
  struct Branches {
    std::vector<float> z[3], b[3];
    QkvLoraExpansions<float> cpu, gpu;
  };
  auto branches = [&](const AttentionShape& shape, Index rank, bool no_k) {
    Branches br;
    const Index width[3] = {shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim,
                            shape.kv_heads * shape.head_dim};
    for (int i = 0; i < 3; ++i) {
      if (i == 1 && no_k) continue;
      br.z[i] = random_values(M * rank, 60 + 2 * i);
      br.b[i] = random_values(width[i] * rank, 61 + 2 * i, 0.1f);
      br.cpu.z[i] = br.z[i].data();
      br.cpu.b[i] = br.b[i].data();
      br.gpu.z[i] = on_gpu(br.z[i]);
      br.gpu.b[i] = on_gpu(br.b[i]);
    }
    br.cpu.rank = br.gpu.rank = rank;
    br.cpu.scale = br.gpu.scale = 4.0;
    return br;
  };
  struct Case {
    AttentionShape shape;
    bool fused;
    Index shift, rank;
    bool no_k;
  };
  for (const auto& [shape, fused, shift, rank, no_k] :
       std::vector<Case>{{{16, 4, 128}, true, 0, 4, false},
                         {{16, 4, 128}, true, 1, 4, true},
                         {{16, 4, 128}, true, 0, 16, true},
                         {{8, 8, 64}, true, 0, 3, false},
                         {{8, 8, 64}, true, 0, 8, false},
                         {{8, 8, 64}, true, 1, 6, false},
                         {{4, 2, 12}, true, 0, 4, false},
                         {{16, 4, 128}, false, 0, 4, false}}) {
    SCOPED_TRACE("H=" + std::to_string(shape.heads) + " hd=" + std::to_string(shape.head_dim) +
                 " rank " + std::to_string(rank) + (fused ? "" : ", fused off") +
                 (shift ? ", shifted" : "") + (no_k ? ", no k adapter" : ""));
    const RopeSides rope(shape.head_dim, M, positions.data(), gpositions);
    const Branches br = branches(shape, rank, no_k);
    const Index W3 = shape.qkv_stride(), width = shape.heads * shape.head_dim;
    const auto n = static_cast<std::size_t>(M * W3);
    const auto qkv = random_values(M * W3, 59, 2.0f);
    AttentionOptions options;
    options.fused = fused;

    std::vector<float> shifted(n + 1);
    std::copy(qkv.begin(), qkv.end(), shifted.begin() + shift);
    float *gqkv = on_gpu(shifted) + shift, *gqkv_beside = on_gpu(qkv);
    float *gout = on_gpu(std::vector<float>(static_cast<std::size_t>(M * width))),
          *glse = on_gpu(std::vector<float>(static_cast<std::size_t>(shape.heads * M)));
    gpu_bf16->lora_expand_qkv(gqkv_beside, br.gpu, M, shape);
    gpu_bf16->attention_forward(gout, nullptr, glse, gqkv_beside, segments, M, shape, options,
                                nullptr, &rope.gpu);
    const std::vector<float> out_beside = to_host(gout, M * width),
                             lse_beside = to_host(glse, shape.heads * M);
    // The profiler counts the outermost LoRA calls: none where the copy for cuDNN adds the
    // expansions (so that the test cannot pass by every case taking lora_expand's path).
    Profiler& profiler = gpu_->profiler();
    profiler.enable(true);
    profiler.reset();
    gpu_bf16->attention_forward(gout, nullptr, glse, gqkv, segments, M, shape, options, &br.gpu,
                                &rope.gpu);
    bool fused_pass = false;
#ifdef ZEROLORA_CUDNN
    fused_pass =
        fused && cudnn_supports_head_dim(shape.head_dim) && rank <= cuda::kQkvExpansionsMaxRank;
#endif
    EXPECT_EQ(profiler.calls(ProfileCategory::kLora), fused_pass ? 0 : (no_k ? 2 : 3))
        << (fused_pass ? "the expansions inside the copy" : "lora_expand's passes");
    profiler.enable(false);
    const std::vector<float> qkv_through = to_host(gqkv, n);
    EXPECT_EQ(qkv_through, to_host(gqkv_beside, n)) << "q/k/v as they end";
    const std::vector<float> out_through = to_host(gout, M * width);
    EXPECT_EQ(out_through, out_beside) << "the attention's output";
    EXPECT_EQ(to_host(glse, shape.heads * M), lse_beside) << "its statistics";

    std::vector<float> cpu_qkv = qkv, cpu_qkv_beside = qkv;
    std::vector<float> cpu_out(static_cast<std::size_t>(M * width)), cpu_out_beside(cpu_out.size()),
        cpu_lse(static_cast<std::size_t>(shape.heads * M));
    cpu_bf16.lora_expand_qkv(cpu_qkv_beside.data(), br.cpu, M, shape);
    cpu_bf16.attention_forward(cpu_out_beside.data(), nullptr, cpu_lse.data(),
                               cpu_qkv_beside.data(), segments, M, shape, options, nullptr,
                               &rope.host);
    cpu_bf16.attention_forward(cpu_out.data(), nullptr, cpu_lse.data(), cpu_qkv.data(), segments, M,
                               shape, options, &br.cpu, &rope.host);
    EXPECT_EQ(cpu_qkv, cpu_qkv_beside);
    EXPECT_EQ(cpu_out, cpu_out_beside);
    EXPECT_LT(norm_error(qkv_through, cpu_qkv), 1e-5) << "q/k/v against the CPU (fp32 sums)";
    EXPECT_LT(norm_error(out_through, cpu_out), 1e-2) << "the output against the CPU";
    // The expansions changed every column that has a branch (v's too), none of k's without.
    const Index k_begin = width, v_begin = width + shape.kv_heads * shape.head_dim;
    std::vector<float> rotated_only = qkv;
    cpu_bf16.rope_rotate_qk(rotated_only.data(), rope.host, M, shape, false);
    Index changed_k = 0, changed_v = 0;
    for (Index row = 0; row < M; ++row)
      for (Index col = k_begin; col < W3; ++col) {
        const bool changed = cpu_qkv[row * W3 + col] != rotated_only[row * W3 + col];
        (col < v_begin ? changed_k : changed_v) += changed ? 1 : 0;
      }
    EXPECT_EQ(changed_k == 0, no_k) << changed_k << " of k's values changed";
    EXPECT_GT(changed_v, 0) << "v's expansion";
  }
  // The fp32 policy (the reference kernel, lora_expand and RoPE's passes first): against the CPU.
  const AttentionShape shape{6, 2, 64};
  const RopeSides rope(shape.head_dim, M, positions.data(), gpositions);
  const Branches br = branches(shape, 4, false);
  auto qkv = random_values(M * shape.qkv_stride(), 67);
  std::vector<float> out(static_cast<std::size_t>(M * shape.heads * shape.head_dim)),
      lse(static_cast<std::size_t>(shape.heads * M));
  float *gqkv = on_gpu(qkv), *gout = on_gpu(out), *glse = on_gpu(lse);
  cpu_kernels_->attention_forward(out.data(), nullptr, lse.data(), qkv.data(), segments, M, shape,
                                  {}, &br.cpu, &rope.host);
  gpu_kernels_->attention_forward(gout, nullptr, glse, gqkv, segments, M, shape, {}, &br.gpu,
                                  &rope.gpu);
  expect_close(to_host(gqkv, qkv.size()), qkv, "fp32 q/k/v after LoRA and RoPE");
  expect_close(to_host(gout, out.size()), out, "fp32 attention after LoRA and RoPE");
}

// The run is told which attention the GPU runs, once per path and reason, and why not cuDNN's
// where the far slower reference kernel does (training_run.cpp notes these lines).
TEST_F(CudaBackend, KernelsSayWhichAttentionRuns) {
  const std::vector<Segment> segments{{0, 40}, {40, 24}};
  const Index M = 64;
  auto forward = [&](auto& kernels, const AttentionShape& shape) {
    float* qkv = on_gpu(random_values(M * shape.qkv_stride(), 41));
    float* out = on_gpu(std::vector<float>(M * shape.heads * shape.head_dim));
    float* lse = on_gpu(std::vector<float>(M * shape.heads));
    kernels.attention_forward(out, nullptr, lse, qkv, segments, M, shape, AttentionOptions{},
                              nullptr, nullptr);
  };
  auto only_note = [](std::vector<std::string> notes, const std::string& part) {
    ASSERT_EQ(notes.size(), 1u) << part;
    EXPECT_NE(notes[0].find(part), std::string::npos) << notes[0];
  };
  const AttentionShape shape{4, 2, 64}, odd_head{4, 2, 12};
  gpu_kernels_->take_notes();
  forward(*gpu_kernels_, shape);
  only_note(gpu_kernels_->take_notes(), "the GPU's reference kernel (fp32 mode");
  forward(*gpu_kernels_, shape);
  EXPECT_TRUE(gpu_kernels_->take_notes().empty()) << "said once";
  auto bf16_kernels = make_kernels<Bf16Policy>(*gpu_);
  forward(*bf16_kernels, odd_head);
  only_note(bf16_kernels->take_notes(), "multiples of 8 up to 256, not 12");
  forward(*bf16_kernels, shape);
#ifdef ZEROLORA_CUDNN
  only_note(bf16_kernels->take_notes(), "cuDNN's fused attention, its ");
#else
  only_note(bf16_kernels->take_notes(), "this build has no cuDNN");
#endif
  forward(*bf16_kernels, shape);
  forward(*bf16_kernels, odd_head);
  EXPECT_TRUE(bf16_kernels->take_notes().empty()) << "said once";
}

}  // namespace
}  // namespace zerolora
