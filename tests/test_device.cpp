// The device seam: the caching allocator's bookkeeping, and the model run on a device the host
// cannot address. StagingDevice is host memory that claims otherwise and fills every fresh
// allocation with NaN: the model must then reach its weights, LoRA tensors, batch geometry and
// outputs only through the Device interface (staged copies, mirrors), exactly as on a GPU, and
// give bit-identical results to the direct CPU path with the same kernels.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <utility>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "core/caching_allocator.hpp"
#include "core/device.hpp"
#include "core/error.hpp"
#include "core/precision.hpp"
#include "core/profiler.hpp"
#include "core/system_memory.hpp"
#include "io/checkpoint.hpp"
#include "lora/lora_layout.hpp"
#include "model/generate.hpp"
#include "model/llama_model.hpp"
#include "model/llama_weights.hpp"
#include "staging_device.hpp"
#include "test_util.hpp"
#include "zero3/whole_model.hpp"

namespace zerolora {
namespace {

// A provider whose release fails, as the ZeRO-3 store's can when the next gather finds the
// device full.
class FailingRelease final : public WeightProvider<float> {
 public:
  FailingRelease() : layout_(config_) {}
  const LlamaConfig& config() const override { return config_; }
  const LayerLayout& layout() const override { return layout_; }
  const float* acquire(UnitId) override { return &value_; }
  void release(UnitId) override {
    ++releases;
    throw ResourceError("the next gather: device memory full");
  }
  int releases = 0;

 private:
  LlamaConfig config_;
  LayerLayout layout_;
  float value_ = 0;
};

TEST(AcquiredUnit, AReleaseErrorLeavesAsItselfAndNeverHidesTheFirstError) {
  FailingRelease provider;
  // At scope exit: the release's own error, typed, not std::terminate.
  const auto hold_and_leave = [&] {
    const AcquiredUnit<float> held{provider, {Unit::kFinalNorm}, provider.acquire({})};
  };
  EXPECT_THROW(hold_and_leave(), ResourceError);
  EXPECT_EQ(provider.releases, 1);
  // Unwinding another error: the unit is still released, and the first error is the one seen.
  try {
    const AcquiredUnit<float> held{provider, {Unit::kFinalNorm}, provider.acquire({})};
    throw ShapeError("the layer's own error");
  } catch (const ShapeError& e) {
    EXPECT_STREQ(e.what(), "the layer's own error");
  }
  EXPECT_EQ(provider.releases, 2);
}

// core/system_memory.hpp: a freed 2 MiB block goes back to the system even after a larger
// block was freed (glibc's default would then have served it from the heap and kept it).
TEST(HostMemory, FreedLargeBlocksGoBackToTheSystem) {
#if !defined(__GLIBC__)
  GTEST_SKIP() << "the mmap threshold is glibc's; this C library is another";
#else
  if (!return_large_frees_to_the_system())
    GTEST_SKIP() << "GLIBC_TUNABLES or MALLOC_MMAP_THRESHOLD_ is set: the runtime leaves "
                    "glibc's allocator as configured";
  auto touch = [](void* p) {
    ASSERT_NE(p, nullptr);
    static_cast<volatile char*>(p)[0] = 1;
    asm volatile("" : : "r"(p) : "memory");  // the allocation must not be optimised away
  };
  void* larger = std::malloc(std::size_t{8} << 20);  // by default, raises the threshold to 8 MiB
  touch(larger);
  std::free(larger);
  const std::size_t mapped_before = mallinfo2().hblks;
  void* block = std::malloc(std::size_t{2} << 20);
  touch(block);
  EXPECT_EQ(mallinfo2().hblks, mapped_before + 1)
      << "a 2 MiB block came from the heap: freed, it would stay resident";
  std::free(block);
  EXPECT_EQ(mallinfo2().hblks, mapped_before) << "the freed 2 MiB block was not unmapped";
#endif
}

TEST(CachingAllocator, RoundsSizesIntoBins) {
  EXPECT_EQ(CachingAllocator::round_size(0), 512u);
  EXPECT_EQ(CachingAllocator::round_size(513), 1024u);
  EXPECT_EQ(CachingAllocator::round_size((1u << 20) - 1), 1u << 20);
  EXPECT_EQ(CachingAllocator::round_size((1u << 20) + 1), 2u << 20);
  EXPECT_EQ(CachingAllocator::round_size((5u << 20) + 7), 6u << 20);
}

struct CountingHeap {
  std::size_t limit = std::size_t{1} << 30;
  std::size_t held = 0, allocations = 0, frees = 0;
  std::vector<std::pair<void*, std::size_t>> blocks;
  CachingAllocator make(CachingAllocator::Caching caching = CachingAllocator::Caching::on) {
    return CachingAllocator(
        "test:0",
        [this](std::size_t bytes) -> void* {
          if (held + bytes > limit) return nullptr;
          held += bytes;
          ++allocations;
          void* p = std::malloc(bytes);
          blocks.emplace_back(p, bytes);
          return p;
        },
        [this](void* p) {
          for (auto& [block, size] : blocks)
            if (block == p) {
              held -= size;
              size = 0;
            }
          ++frees;
          std::free(p);
        },
        caching);
  }
};

TEST(CachingAllocator, ReusesFreedBlocksWithoutTheDevice) {
  CountingHeap heap;
  {
    auto allocator = heap.make();
    // Two steps of the same activation sizes: the second allocates nothing from the device.
    for (int step = 0; step < 2; ++step) {
      std::vector<void*> live;
      for (std::size_t bytes : {100u, 3000u, 5u << 20, 700u << 10})
        live.push_back(allocator.allocate(bytes));
      for (void* p : live) allocator.free(p);
    }
    EXPECT_EQ(heap.allocations, 4u);
    EXPECT_EQ(allocator.device_allocations(), 4u);
    EXPECT_EQ(allocator.allocated_bytes(), 0u);
    EXPECT_EQ(allocator.reserved_bytes(), 512u + 3072u + (6u << 20) + (700u << 10));
    EXPECT_EQ(allocator.peak_allocated_bytes(), allocator.reserved_bytes());
    // A request far smaller than a cached block does not take it (waste over a quarter).
    void* small = allocator.allocate(1u << 20);
    EXPECT_EQ(heap.allocations, 5u);
    allocator.free(small);
  }
  EXPECT_EQ(heap.held, 0u) << "the destructor gives everything back";
}

TEST(CachingAllocator, GivesTheCacheBackBeforeRefusing) {
  CountingHeap heap;
  heap.limit = 8u << 20;
  auto allocator = heap.make();
  void* a = allocator.allocate(6u << 20);
  allocator.free(a);                       // cached: 6 MiB of the 8 the device has
  void* b = allocator.allocate(4u << 20);  // not a fit for the cached block: cache released
  EXPECT_EQ(allocator.reserved_bytes(), 4u << 20);
  try {
    allocator.allocate(6u << 20);
    FAIL() << "expected ResourceError";
  } catch (const ResourceError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("test:0"), std::string::npos) << message;
    EXPECT_NE(message.find("6 MiB"), std::string::npos) << message;
    EXPECT_NE(message.find("4 MiB in use"), std::string::npos) << message;
  }
  allocator.free(b);
}

TEST(CachingAllocator, WithoutCachingEveryBufferIsItsOwnExactAllocation) {
  CountingHeap heap;
  {
    auto allocator = heap.make(CachingAllocator::Caching::off);
    for (int step = 0; step < 2; ++step) {
      void* a = allocator.allocate(100);
      void* b = allocator.allocate((5u << 20) + 7);
      EXPECT_EQ(heap.blocks.back().second, (5u << 20) + 7) << "the exact size, not a bin's";
      EXPECT_EQ(allocator.allocated_bytes(), 100u + (5u << 20) + 7);
      EXPECT_EQ(allocator.reserved_bytes(), allocator.allocated_bytes());
      allocator.free(a);
      allocator.free(b);
      EXPECT_EQ(heap.held, 0u) << "freed buffers go back to the device at once";
    }
    EXPECT_EQ(heap.allocations, 4u);
    EXPECT_EQ(heap.frees, 4u);
    EXPECT_EQ(allocator.reserved_bytes(), 0u);
    EXPECT_EQ(allocator.peak_allocated_bytes(), 100u + (5u << 20) + 7);
    void* kept = allocator.allocate(0);
    EXPECT_EQ(heap.blocks.back().second, 1u);
    (void)kept;  // the destructor gives it back
  }
  EXPECT_EQ(heap.held, 0u);
}

using testing::StagingDevice;

LlamaConfig tiny_config() {
  LlamaConfig config;
  config.hidden_size = 16;
  config.intermediate_size = 24;
  config.num_layers = 2;
  config.num_heads = 4;
  config.num_kv_heads = 2;
  config.head_dim = 4;
  config.vocab_size = 40;
  return config;
}

struct Results {
  double loss = 0, eval_loss = 0;
  std::vector<float> grads, logits;
  std::vector<std::int32_t> generated;
};

template <class P>
Results run_model(Runtime& rt, Recompute recompute) {
  const LlamaConfig config = tiny_config();
  auto weights = random_llama_weights<typename P::Weight>(rt, config, 11, 0.3);
  LoraConfig lora;
  lora.rank = 2;
  lora.alpha = 4;
  lora.dropout = 0.1;
  lora.targets = parse_lora_targets("q_proj,k_proj,v_proj,o_proj,down_proj");
  const LoraLayout layout(config, lora);
  const std::vector<float> params = testing::lora_params_with_nonzero_b(layout, 5, 0.02f);
  ComputeOptions options;
  options.recompute = recompute;
  options.mlp_chunk_rows = 5;   // several MLP chunks
  options.head_chunk_rows = 3;  // several lm_head chunks
  options.bf16_residual = std::is_same_v<P, Bf16Policy>;
  LlamaModel<P> model(rt, weights, &layout, options);
  Batch batch;
  batch.add_sequence({1, 7, 3, 9, 12, 5, 2}, {1, 7, 3, 9, 12, 5, 2}, 0);
  batch.add_sequence({4, 8, 15, 16}, {kIgnoreIndex, 8, 15, 16}, 1);
  batch.add_sequence({23, 30, 31}, {23, 30, 31}, 2);
  Results r;
  r.grads.assign(params.size(), 0.0f);
  r.loss = model.forward_backward(batch, params, r.grads, 0.1, {3, 4});
  r.eval_loss = model.loss(batch, params);
  r.logits.resize(static_cast<std::size_t>(batch.size() * config.vocab_size));
  model.forward_logits(batch, params, r.logits.data());
  r.generated = generate(model, std::vector<std::int32_t>{1, 7, 3}, 5,
                         std::span<const std::int64_t>{}, std::span<const float>(params));
  return r;
}

template <class P>
void expect_staged_equals_direct(Recompute recompute) {
  Runtime direct(2);
  auto staged_device = std::make_unique<StagingDevice>();
  StagingDevice& staging = *staged_device;
  Runtime staged(2, std::move(staged_device));
  const Results a = run_model<P>(direct, recompute);
  const Results b = run_model<P>(staged, recompute);
  ASSERT_TRUE(std::isfinite(a.loss));
  EXPECT_EQ(a.loss, b.loss);
  EXPECT_EQ(a.eval_loss, b.eval_loss);
  EXPECT_EQ(a.grads, b.grads);
  EXPECT_EQ(a.logits, b.logits);
  EXPECT_EQ(a.generated, b.generated);
  EXPECT_GT(staging.uploads, 0);
  EXPECT_GT(staging.downloads, 0);
}

TEST(DeviceSeam, StagedDeviceEqualsHostFp32FullRecompute) {
  expect_staged_equals_direct<Fp32Policy>(Recompute::kFull);
}
TEST(DeviceSeam, StagedDeviceEqualsHostFp32NoRecompute) {
  expect_staged_equals_direct<Fp32Policy>(Recompute::kNone);
}
TEST(DeviceSeam, StagedDeviceEqualsHostFp32AttentionKept) {
  expect_staged_equals_direct<Fp32Policy>(Recompute::kAttention);
}
TEST(DeviceSeam, StagedDeviceEqualsHostBf16Selective) {
  expect_staged_equals_direct<Bf16Policy>(Recompute::kSelective);
}
TEST(DeviceSeam, StagedDeviceEqualsHostBf16AttentionMlpKept) {
  expect_staged_equals_direct<Bf16Policy>(Recompute::kAttentionMlp);
}

// Below ZeRO-3 a GPU run keeps the whole model in the device's memory only (load_whole_model: a
// one-rank store reads it there through its bounded staging buffer), never as a host copy; the
// CPU keeps it in host memory. On a device the host cannot address, unit for unit equal to the
// host's weights.
TEST(DeviceSeam, WholeModelLoadsIntoTheDevicesMemory) {
  const Checkpoint checkpoint(testing::fixtures_dir() / "odd_untied_all" / "model");
  Runtime host(1);
  auto expected = load_whole_model<bf16>(host, checkpoint);
  EXPECT_FALSE(expected->device_memory());
  EXPECT_TRUE(expected->resident());
  auto device = std::make_unique<StagingDevice>();
  StagingDevice& staging = *device;
  Runtime staged(1, std::move(device));
  const std::size_t before = staging.allocated_bytes();
  auto weights = load_whole_model<bf16>(staged, checkpoint);
  EXPECT_TRUE(weights->device_memory()) << "the GPU's model would be mirrored from a host copy";
  EXPECT_TRUE(weights->resident());
  const LlamaConfig& c = checkpoint.config();
  const std::vector<UnitId> units = testing::every_unit(c);
  std::size_t model_bytes = 0;
  for (const auto& u : units)
    model_bytes += static_cast<std::size_t>(unit_elements(c, weights->layout(), u)) * sizeof(bf16);
  EXPECT_GE(staging.allocated_bytes() - before, model_bytes) << "the model is in the device";
  weights->begin_schedule(units);
  expected->begin_schedule(units);
  for (const auto& u : units) {
    const auto n = static_cast<std::size_t>(unit_elements(c, weights->layout(), u));
    std::vector<bf16> copied(n);
    staged.device().copy_to_host(copied.data(), weights->acquire(u), n * sizeof(bf16));
    EXPECT_EQ(std::memcmp(copied.data(), expected->acquire(u), n * sizeof(bf16)), 0)
        << "unit " << static_cast<int>(u.kind) << " " << u.layer;
    weights->release(u);
    expected->release(u);
  }
}

// One fp32 training step of the tiny model with LoRA (rank 2) on `targets` over one 7-token
// sequence; `before` runs after the model is built, just before the step.
void tiny_step(Runtime& rt, const char* targets, const ComputeOptions& options,
               const std::function<void()>& before) {
  const LlamaConfig config = tiny_config();
  auto weights = random_llama_weights<float>(rt, config, 11, 0.3);
  LoraConfig lora;
  lora.rank = 2;
  lora.targets = parse_lora_targets(targets);
  const LoraLayout layout(config, lora);
  const std::vector<float> params = testing::lora_params_with_nonzero_b(layout, 5, 0.02f);
  std::vector<float> grads(params.size(), 0.0f);
  LlamaModel<Fp32Policy> model(rt, weights, &layout, options);
  Batch batch;
  batch.add_sequence({1, 7, 3, 9, 12, 5, 2}, {1, 7, 3, 9, 12, 5, 2}, 0);
  before();
  model.forward_backward(batch, params, grads, 0.1, {1, 1});
}

// The MLP's chunk buffers are sized for the rows a step has when it has fewer than a chunk: a
// GPU allocates them whole, so the 1024-row default would waste memory on small micro-batches.
TEST(DeviceSeam, MlpChunkBuffersFollowASmallMicroBatch) {
  auto peak_bytes = [](Index chunk_rows) {
    Runtime rt(1);
    ComputeOptions options;  // full recompute: the MLP runs on the workspace's chunk buffers
    options.mlp_chunk_rows = chunk_rows;
    tiny_step(rt, "q_proj,down_proj", options, [&] { rt.device().reset_peak(); });
    return rt.device().peak_allocated_bytes();
  };
  EXPECT_EQ(peak_bytes(1024), peak_bytes(7)) << "a 7-row step sized buffers for 1024 rows";
}

// Records each outermost scope's kind and part, as a GPU's clock marks them.
class RecordingClock final : public DeviceClock {
 public:
  void mark_start() override {}
  void mark_end(ProfileCategory category, StepPart part) override {
    scopes.push_back({category, part});
  }
  void collect(ProfileSeconds&) override {}
  std::vector<std::pair<ProfileCategory, StepPart>> scopes;
};

TEST(Profiler, AStepPartHoldsTheScopesOpenedWhileItLives) {
  Profiler profiler;
  profiler.enable(true);
  RecordingClock clock;
  profiler.set_device_clock(&clock);
  { ProfileScope matmul(profiler, ProfileCategory::kMatmul); }
  {
    ProfilePart once(profiler, StepPart::kOncePerStep);
    { ProfileScope loss(profiler, ProfileCategory::kLoss); }
    {
      ProfilePart layers(profiler, StepPart::kLayers);
      ProfileScope norm(profiler, ProfileCategory::kNorm);
    }
    ProfileScope other(profiler, ProfileCategory::kOther);
  }
  { ProfileScope rope(profiler, ProfileCategory::kRope); }
  {  // a scope counts in the part it opened in, not the one it closes in
    ProfileScope swiglu(profiler, ProfileCategory::kSwiglu);
    ProfilePart once(profiler, StepPart::kOncePerStep);
  }
  using C = ProfileCategory;
  using S = StepPart;
  const std::vector<std::pair<C, S>> expected = {
      {C::kMatmul, S::kLayers},     {C::kLoss, S::kOncePerStep}, {C::kNorm, S::kLayers},
      {C::kOther, S::kOncePerStep}, {C::kRope, S::kLayers},      {C::kSwiglu, S::kLayers}};
  EXPECT_EQ(clock.scopes, expected);
  EXPECT_NEAR(profiler.seconds(S::kLayers) + profiler.seconds(S::kOncePerStep),
              profiler.total_seconds(), 1e-12);
  EXPECT_GT(profiler.seconds(S::kOncePerStep), 0.0);
  EXPECT_EQ(profiler.seconds(S::kOncePerStep),
            profiler.seconds(C::kLoss) + profiler.seconds(C::kOther));
  profiler.set_device_clock(nullptr);
}

// What a benchmark of a few layers projects to many from: the embedding, the final norm, the
// lm_head and the loss count once per step, every op of the decoder layers (and their
// recompute) in the layers' part.
TEST(Profiler, TheModelCountsItsHeadAndEmbeddingOncePerStep) {
  Runtime rt(1);
  ComputeOptions options;
  options.head_chunk_rows = 3;  // several lm_head chunks
  RecordingClock clock;
  tiny_step(rt, "q_proj,v_proj", options, [&] {
    rt.profiler().enable(true);
    rt.profiler().set_device_clock(&clock);
  });
  rt.profiler().set_device_clock(nullptr);
  rt.profiler().enable(false);
  using C = ProfileCategory;
  std::map<std::pair<C, StepPart>, int> count;
  for (const auto& scope : clock.scopes) ++count[scope];
  const auto in = [&](C kind, StepPart part) { return count[{kind, part}]; };
  const StepPart layers = StepPart::kLayers, once = StepPart::kOncePerStep;
  // 6 rows with a label (the last token has none) in chunks of 3: 2 lm_head chunks, each a
  // forward and a backward GEMM, a loss, and the final norm forward and backward.
  EXPECT_EQ(in(C::kLoss, once), 2);
  EXPECT_EQ(in(C::kMatmul, once), 4);
  EXPECT_EQ(in(C::kNorm, once), 4);
  EXPECT_EQ(in(C::kOther, once), 5);  // the embedding, 2 row gathers and 2 scatters
  ASSERT_FALSE(clock.scopes.empty());
  EXPECT_EQ(clock.scopes.front(), std::make_pair(C::kOther, once)) << "the embedding first";
  EXPECT_EQ(in(C::kLoss, layers), 0);
  for (C kind : {C::kAttention, C::kRope, C::kLora, C::kSwiglu}) {
    EXPECT_GT(in(kind, layers), 0) << profile_category_name(kind);
    EXPECT_EQ(in(kind, once), 0) << profile_category_name(kind);
  }
  EXPECT_GT(in(C::kMatmul, layers), 0) << "the projections are the layers'";
  EXPECT_GT(in(C::kNorm, layers), 0);
}

}  // namespace
}  // namespace zerolora
