// zerolora vs the PyTorch reference (transformers LlamaForCausalLM + PEFT LoRA +
// torch.optim.AdamW), on the fixtures made by tools/make_fixtures.py: logits, loss, every
// LoRA gradient, and 3 training steps through LoraTrainer (micro-batches, clipping that fires,
// AdamW). fp32 and bf16 modes, recompute on and off; and the same cases with the model on a
// device the host cannot address (the GPU's path, with the CPU's kernels). The check itself is
// tests/reference_fixture.hpp's, shared with the GPU's tests.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

#include "comm/communicator.hpp"
#include "core/error.hpp"
#include "core/precision.hpp"
#include "core/profiler.hpp"
#include "data/examples.hpp"
#include "io/checkpoint.hpp"
#include "io/tensor_read.hpp"
#include "model/llama_model.hpp"
#include "model/llama_weights.hpp"
#include "reference_fixture.hpp"
#include "staging_device.hpp"
#include "test_util.hpp"
#include "tolerances.hpp"
#include "train/lora_trainer.hpp"

namespace zerolora {
namespace {

using testing::Case;
using testing::case_name;
using testing::check_against_reference;
using testing::Reference;

class ReferenceFixture : public ::testing::TestWithParam<Case> {};

TEST_P(ReferenceFixture, MatchesTransformersAndPeft) {
  const Case& c = GetParam();
  Runtime rt(2);
  if (c.precision == Precision::kFp32)
    check_against_reference<Fp32Policy>(rt, c, tolerance::kFp32);
  else
    check_against_reference<Bf16Policy>(rt, c, tolerance::kBf16);
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (const char* name :
       {"gqa_tied", "odd_untied_all", "llama3_rope", "linear_rope", "qwen2_bias", "mistral_window"})
    for (Precision p : {Precision::kFp32, Precision::kBf16})
      for (Recompute r : {Recompute::kFull, Recompute::kAttention, Recompute::kAttentionMlp,
                          Recompute::kSelective, Recompute::kNone}) {
        cases.push_back({name, p, r});
        if (p == Precision::kBf16) cases.push_back({name, p, r, true});
      }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ReferenceFixture, ::testing::ValuesIn(all_cases()), case_name);

// The same check with the model on a device the host cannot address (tests/staging_device.hpp):
// the path a GPU takes (the model read into device memory by a one-rank store, the LoRA tensors
// mirrored layer by layer, the batch geometry uploaded) with the CPU's kernels, so that the
// GPU's fixture test (test_cuda_model.cpp, the same cases) differs from this one only in its
// kernels.
class StagedDeviceFixture : public ::testing::TestWithParam<Case> {};

TEST_P(StagedDeviceFixture, MatchesTransformersAndPeft) {
  const Case& c = GetParam();
  auto device = std::make_unique<testing::StagingDevice>();
  testing::StagingDevice& staging = *device;
  Runtime rt(2, std::move(device));
  if (c.precision == Precision::kFp32)
    check_against_reference<Fp32Policy>(rt, c, tolerance::kFp32);
  else
    check_against_reference<Bf16Policy>(rt, c, tolerance::kBf16);
  EXPECT_GT(staging.uploads, 0) << "the model ran in the device's memory";
}

INSTANTIATE_TEST_SUITE_P(Fixtures, StagedDeviceFixture,
                         ::testing::ValuesIn(testing::device_fixture_cases()), case_name);

// The bf16 residual stream is one function whichever way backward gets its activations:
// the layer inputs kept in bf16 and restored for recompute must give exactly the gradients of
// keeping everything, and training's forward must equal evaluation's.
TEST(Bf16Residual, RecomputeModesAgreeAndEvaluationSeesTheSameModel) {
  const Reference ref(testing::fixtures_dir() / "odd_untied_all");
  Runtime rt(2);
  auto weights = load_llama_weights<bf16>(rt, ref.checkpoint);
  const LoraLayout layout(ref.checkpoint.config(), ref.lora_config());
  std::vector<float> params(static_cast<std::size_t>(layout.size()));
  for (const auto& e : layout.entries()) {
    const auto values = ref.floats("lora." + e.name);
    std::copy(values.begin(), values.end(), params.begin() + e.offset);
  }
  const Batch batch = ref.batch();
  const LlamaConfig& c = ref.checkpoint.config();
  const double rows = static_cast<double>(batch.size());
  const LoraZShape lora_z = LoraZShape::of(&layout.config());
  auto run = [&](Recompute recompute, bool bf16_residual, double* eval_loss, double budget = -1,
                 std::vector<Recompute>* levels = nullptr) {
    ComputeOptions options;
    options.recompute = recompute;
    options.recompute_budget_bytes = budget;
    options.bf16_residual = bf16_residual;
    LlamaModel<Bf16Policy> model(rt, weights, &layout, options);
    std::vector<float> grads(params.size(), 0.0f);
    const double loss = model.forward_backward(batch, params, grads, 1.0, {});
    if (eval_loss) *eval_loss = model.loss(batch, params);
    if (levels) *levels = model.recompute_levels();
    grads.push_back(static_cast<float>(loss));
    return grads;
  };
  double eval_loss = 0;
  const auto full = run(Recompute::kFull, true, &eval_loss);
  EXPECT_EQ(full, run(Recompute::kAttention, true, nullptr));
  EXPECT_EQ(full, run(Recompute::kAttentionMlp, true, nullptr));
  EXPECT_EQ(full, run(Recompute::kSelective, true, nullptr));
  EXPECT_EQ(full, run(Recompute::kNone, true, nullptr));
  // Mixed plans: every layer at a level from full to none in one model (budgets beyond full
  // recompute's, which keeps the LoRA z).
  const Recompute middle = auto_middle_level(c);
  const double kept_full = 4 * kept_elements(Recompute::kFull, c, rows, lora_z),
               attention = 4 * kept_elements(Recompute::kAttention, c, rows, lora_z),
               between = 4 * kept_elements(middle, c, rows, lora_z),
               none = 4 * kept_elements(Recompute::kNone, c, rows, lora_z);
  const auto L = static_cast<double>(c.num_layers);
  ASSERT_GE(c.num_layers, 2);
  const std::pair<double, std::pair<Recompute, Recompute>> plans[] = {
      {attention - kept_full, {Recompute::kAttention, Recompute::kFull}},
      {L * (attention - kept_full) + (between - attention), {middle, Recompute::kAttention}},
      {L * (between - kept_full) + (none - between), {Recompute::kNone, middle}}};
  for (const auto& [budget, first_last] : plans) {
    std::vector<Recompute> levels;
    EXPECT_EQ(full, run(Recompute::kAuto, true, nullptr, budget, &levels));
    EXPECT_EQ(levels.front(), first_last.first) << describe_recompute_plan(levels);
    EXPECT_EQ(levels.back(), first_last.second) << describe_recompute_plan(levels);
  }
  EXPECT_EQ(static_cast<float>(eval_loss), full.back());
  // The option changes the computation (otherwise the comparisons above prove nothing).
  EXPECT_NE(full, run(Recompute::kFull, false, nullptr));
}

// What each recompute mode keeps: full one layer's working set and every layer's LoRA z (of
// the adapted modules only: the others have none), selective every layer's attention block but
// no MLP outputs, none everything (the [M, 2I] gate/up outputs too), attention_mlp every layer's
// attention and gate/up outputs. With every module adapted and with q and v alone.
TEST(Recompute, EachModeKeepsWhatItSays) {
  const Reference ref(testing::fixtures_dir() / "odd_untied_all");
  Runtime rt(1);
  auto weights = load_llama_weights<float>(rt, ref.checkpoint);
  const LlamaConfig& c = ref.checkpoint.config();
  const Batch batch = ref.batch();
  // What a model with `layout` (null: no adapters) holds for backward at `recompute`.
  auto saved_with = [&](const LoraLayout* layout, Recompute recompute) {
    ComputeOptions options;
    options.recompute = recompute;
    options.recompute_budget_bytes = 0;  // auto: nothing beyond full recompute
    LlamaModel<Fp32Policy> model(rt, weights, layout, options);
    const auto n = static_cast<std::size_t>(layout ? layout->size() : 0);
    std::vector<float> params(n, 0.01f), grads(n, 0.0f);
    model.forward_backward(batch, params, grads, 1.0, {});
    return model.saved_activation_bytes();
  };
  LoraConfig q_v = ref.lora_config();
  ASSERT_EQ(q_v.module_count(), kLoraModuleCount);
  q_v.targets = {LoraModule::kQ, LoraModule::kV};
  for (const LoraConfig& lora_config : {ref.lora_config(), q_v}) {
    SCOPED_TRACE(lora_config.module_count());
    const LoraLayout layout(c, lora_config);
    auto saved = [&](Recompute recompute) { return saved_with(&layout, recompute); };
    const std::size_t full = saved(Recompute::kFull), selective = saved(Recompute::kSelective),
                      none = saved(Recompute::kNone), attention = saved(Recompute::kAttention),
                      attention_mlp = saved(Recompute::kAttentionMlp);
    const auto L = static_cast<std::size_t>(c.num_layers);
    const auto M = static_cast<std::size_t>(batch.size());
    const std::size_t gate_up =
        M * static_cast<std::size_t>(2 * c.intermediate_size) * sizeof(float);
    const std::size_t attention_output =
        M * static_cast<std::size_t>(c.q_dim() + c.num_heads) * sizeof(float);
    const std::size_t lora_z = static_cast<std::size_t>(lora_config.module_count()) * M *
                               static_cast<std::size_t>(lora_config.rank) * 4;
    // Every layer that backward recomputes keeps its LoRA z, the working set lending its own to
    // the last layer (buffers are swapped, never copied): L sets in all where the working set
    // alone had one. What a layer keeping everything keeps is that working set.
    ASSERT_GT(full, (L - 1) * lora_z);
    const std::size_t working = full - (L - 1) * lora_z;
    EXPECT_EQ(selective, L * working);
    EXPECT_EQ(none, L * (working + gate_up));
    // The same for the attention output: L in all where full recompute has one.
    EXPECT_EQ(attention, full + (L - 1) * attention_output);
    // Gate/up outputs only the layers have, the working set's MLP running chunk by chunk in
    // scratch of its own.
    EXPECT_EQ(attention_mlp, full + (L - 1) * attention_output + L * gate_up);
    EXPECT_EQ(saved(Recompute::kAuto), full);
    // kept_elements (the planner's and the memory estimate's arithmetic) says the same.
    const auto rows = static_cast<double>(M);
    const LoraZShape shape = LoraZShape::of(&lora_config);
    EXPECT_EQ(4 * kept_elements(Recompute::kFull, c, rows, shape), static_cast<double>(lora_z));
    EXPECT_EQ(4 * kept_elements(Recompute::kSelective, c, rows, shape),
              static_cast<double>(working));
    EXPECT_EQ(4 * kept_elements(Recompute::kAttention, c, rows, shape),
              static_cast<double>(attention_output + lora_z));
    EXPECT_EQ(4 * kept_elements(Recompute::kNone, c, rows, shape),
              static_cast<double>(working + gate_up));
    EXPECT_EQ(4 * kept_elements(Recompute::kAttentionMlp, c, rows, shape),
              static_cast<double>(attention_output + lora_z + gate_up));
  }
  {  // No adapters: no z, so full recompute keeps nothing beyond the one working set.
    const std::size_t working = saved_with(nullptr, Recompute::kFull);
    EXPECT_EQ(saved_with(nullptr, Recompute::kSelective),
              static_cast<std::size_t>(c.num_layers) * working);
    const auto rows = static_cast<double>(batch.size());
    EXPECT_EQ(kept_elements(Recompute::kFull, c, rows, LoraZShape::of(nullptr)), 0.0);
    EXPECT_EQ(4 * kept_elements(Recompute::kSelective, c, rows, {}), static_cast<double>(working));
  }
}

// What each level recomputes, counted by the profiler: the attention (forward, recompute,
// backward per layer), the base projections (forward q/k/v, o, gate/up, down; backward the
// same four; the recompute's q/k/v, o and gate/up; the lm_head once each way) and the LoRA
// calls the recompute adds: one expansion per adapter of the modules it reruns (q/k/v/o; gate
// and up), their z kept at every level, and no contraction (down's z too is the forward's). The
// counts say how many calls; TheBackwardExpandsTheForwardsZ below, what they compute.
TEST(Recompute, WhatIsKeptIsNotRecomputed) {
  const Reference ref(testing::fixtures_dir() / "odd_untied_all");  // every module adapted
  Runtime rt(1);
  auto weights = load_llama_weights<float>(rt, ref.checkpoint);
  const LoraLayout layout(ref.checkpoint.config(), ref.lora_config());
  const std::vector<float> params(static_cast<std::size_t>(layout.size()), 0.01f);
  auto calls = [&](Recompute recompute) {
    ComputeOptions options;
    options.recompute = recompute;
    LlamaModel<Fp32Policy> model(rt, weights, &layout, options);
    std::vector<float> grads(params.size(), 0.0f);
    rt.profiler().reset();
    rt.profiler().enable(true);
    model.forward_backward(ref.batch(), params, grads, 1.0, {});
    rt.profiler().enable(false);
    return std::tuple(rt.profiler().calls(ProfileCategory::kAttention),
                      rt.profiler().calls(ProfileCategory::kMatmul),
                      rt.profiler().calls(ProfileCategory::kLora));
  };
  const std::int64_t L = ref.checkpoint.config().num_layers;
  std::int64_t attention_adapters = 0, gate_up_adapters = 0;
  for (int l = 0; l < L; ++l) {
    for (LoraModule m : kAttentionLoraModules) attention_adapters += layout.adapter(l, m) ? 1 : 0;
    for (LoraModule m : {LoraModule::kGate, LoraModule::kUp})
      gate_up_adapters += layout.adapter(l, m) ? 1 : 0;
  }
  ASSERT_GT(attention_adapters, 0);
  ASSERT_GT(gate_up_adapters, 0);
  ASSERT_TRUE(layout.adapter(0, LoraModule::kDown));
  const auto [full_attention, full_matmuls, full_lora] = calls(Recompute::kFull);
  const std::int64_t lora = std::get<2>(calls(Recompute::kNone));  // the forward's and backward's
  EXPECT_EQ(full_attention, 3 * L);
  EXPECT_EQ(full_lora, lora + attention_adapters + gate_up_adapters);
  EXPECT_EQ(calls(Recompute::kAttention),
            std::tuple(2 * L, full_matmuls, lora + attention_adapters + gate_up_adapters));
  EXPECT_EQ(calls(Recompute::kAttentionMlp),
            std::tuple(2 * L, full_matmuls - L, lora + attention_adapters));
  EXPECT_EQ(calls(Recompute::kSelective),
            std::tuple(2 * L, full_matmuls - 2 * L, lora + gate_up_adapters));
  EXPECT_EQ(calls(Recompute::kNone), std::tuple(2 * L, full_matmuls - 3 * L, lora));
}

// A LoRA source whose backward sees other A matrices than its forward did (B the same).
class OtherABackward final : public LoraSource<float> {
 public:
  OtherABackward(const std::vector<float>& forward, const std::vector<float>& backward,
                 std::vector<float>& grads)
      : forward_(forward), backward_(backward), grads_(grads) {}
  LoraLayerView<float> acquire(int, bool with_grads) override {
    if (with_grads) return {backward_.data(), grads_.data(), 0};
    return {forward_.data(), nullptr, 0};
  }

 private:
  const std::vector<float>& forward_;
  const std::vector<float>& backward_;
  std::vector<float>& grads_;
};

// The backward expands the z its layer's forward made, at every level, and contracts nothing
// again: A enters a layer's forward only through z (z = drop(x) A^T), so with the backward
// given other A matrices than the forward, every level's gradients are those of `none`, which
// recomputes nothing (a recompute that contracted again would take the backward's A into its
// activations). Every module adapted, dropout drawn.
TEST(Recompute, TheBackwardExpandsTheForwardsZ) {
  const Reference ref(testing::fixtures_dir() / "odd_untied_all");
  Runtime rt(1);
  auto weights = load_llama_weights<float>(rt, ref.checkpoint);
  LoraConfig lora = ref.lora_config();
  lora.dropout = 0.1;
  const LoraLayout layout(ref.checkpoint.config(), lora);
  ASSERT_EQ(lora.module_count(), kLoraModuleCount);
  std::vector<float> forward(static_cast<std::size_t>(layout.size()));
  for (std::size_t i = 0; i < forward.size(); ++i)
    forward[i] = 0.02f * static_cast<float>(static_cast<int>(i % 11) - 5);
  std::vector<float> backward = forward;
  for (const auto& e : layout.entries())
    if (!e.is_b)
      for (Index i = 0; i < e.numel(); ++i) backward[static_cast<std::size_t>(e.offset + i)] *= 3;
  // The gradients and the loss at `recompute`, the backward given `backward_params`.
  auto grads = [&](Recompute recompute, const std::vector<float>& backward_params) {
    ComputeOptions options;
    options.recompute = recompute;
    LlamaModel<Fp32Policy> model(rt, weights, &layout, options);
    std::vector<float> g(forward.size(), 0.0f);
    OtherABackward source(forward, backward_params, g);
    g.push_back(static_cast<float>(model.forward_backward(ref.batch(), source, 1.0, {3, 1})));
    return g;
  };
  const auto none = grads(Recompute::kNone, backward);
  for (Recompute level :
       {Recompute::kFull, Recompute::kAttention, Recompute::kAttentionMlp, Recompute::kSelective})
    EXPECT_EQ(grads(level, backward), none) << recompute_name(level);
  // The backward's A matters (otherwise the comparisons above prove nothing).
  EXPECT_NE(grads(Recompute::kFull, forward), none);
}

// Under auto with a fixed budget the plan is made for the largest batch so far (buffers never
// shrink): a smaller batch first keeps more, a larger one then fewer layers, which give back
// what they kept, and a smaller one after it keeps no more; every step's gradients stay those of
// full recompute, and what is held never exceeds the budget beyond full recompute's.
TEST(Recompute, PlanFollowsTheBatchAndKeepsExactGradients) {
  const Reference ref(testing::fixtures_dir() / "gqa_tied");
  Runtime rt(1);
  auto weights = load_llama_weights<float>(rt, ref.checkpoint);
  const LlamaConfig& c = ref.checkpoint.config();
  const LoraLayout layout(c, ref.lora_config());
  std::vector<float> params(static_cast<std::size_t>(layout.size()));
  for (std::size_t i = 0; i < params.size(); ++i) params[i] = 0.01f * static_cast<float>(i % 13);
  const Batch whole = ref.batch();
  Batch first;  // the first sequence alone: fewer rows, so the same budget keeps more
  first.add_sequence(ref.sequences()[0].input_ids, ref.sequences()[0].labels, 0);
  ASSERT_LT(first.size(), whole.size());
  const LoraZShape lora_z = LoraZShape::of(&layout.config());
  const double budget =
      4 * kept_elements(auto_middle_level(c), c, static_cast<double>(first.size()), lora_z) *
      static_cast<double>(c.num_layers);
  ComputeOptions auto_options;
  auto_options.recompute = Recompute::kAuto;
  auto_options.recompute_budget_bytes = budget;
  LlamaModel<Fp32Policy> planned(rt, weights, &layout, auto_options);
  LlamaModel<Fp32Policy> full(rt, weights, &layout, {});
  std::vector<std::string> plans;
  for (const Batch* batch : std::vector<const Batch*>{&first, &whole, &first, &whole}) {
    std::vector<float> a(params.size(), 0.0f), b(params.size(), 0.0f);
    const double loss_a = planned.forward_backward(*batch, params, a, 1.0, {3, 1});
    const double loss_b = full.forward_backward(*batch, params, b, 1.0, {3, 1});
    EXPECT_EQ(loss_a, loss_b);
    EXPECT_EQ(a, b);
    plans.push_back(describe_recompute_plan(planned.recompute_levels()));
    EXPECT_LE(static_cast<double>(planned.saved_activation_bytes()),
              budget + static_cast<double>(full.saved_activation_bytes()))
        << plans.back();
  }
  EXPECT_EQ(plans[0], std::to_string(c.num_layers) + " " + recompute_name(auto_middle_level(c)));
  EXPECT_NE(plans[1], plans[0]);
  EXPECT_EQ(plans[2], plans[1]);
  EXPECT_EQ(plans[3], plans[1]);
}

TEST(RecomputePlan, SpendsTheBudgetInOrderAndNeverRecomputesMoreWithMore) {
  LlamaConfig c;
  // gate/up 2 D I = 20480 multiply-adds a row, twice q/k/v and o's D (q + 2 kv) + q D = 10240:
  // auto plans by way of attention_mlp (one less intermediate and it would be selective).
  c.vocab_size = 1000, c.hidden_size = 64, c.intermediate_size = 160, c.num_layers = 4;
  c.num_heads = 8, c.num_kv_heads = 2, c.head_dim = 8;
  ASSERT_EQ(auto_middle_level(c), Recompute::kAttentionMlp);
  const double rows = 300;
  const LoraZShape lora_z{.rank = 4, .modules = 4};  // the seed's q/k/v/o at r 4
  // Every level keeps the adapted modules' LoRA z, full recompute's one cost; budgets count
  // beyond it.
  const double full = 4 * kept_elements(Recompute::kFull, c, rows, lora_z);
  EXPECT_EQ(full, 4 * rows * lora_z.modules * lora_z.rank);
  const double attention = 4 * kept_elements(Recompute::kAttention, c, rows, lora_z);
  const double attention_mlp = 4 * kept_elements(Recompute::kAttentionMlp, c, rows, lora_z);
  const double selective = 4 * kept_elements(Recompute::kSelective, c, rows, lora_z);
  const double none = 4 * kept_elements(Recompute::kNone, c, rows, lora_z);
  EXPECT_EQ(attention - full, 4 * rows * (c.q_dim() + c.num_heads));
  EXPECT_EQ(attention_mlp - attention, 4 * rows * 2 * c.intermediate_size);
  EXPECT_EQ(none - selective, 4 * rows * 2 * c.intermediate_size);
  auto plan = [&](double budget) {
    return describe_recompute_plan(plan_recompute(c, rows, lora_z, 4, budget));
  };
  EXPECT_EQ(plan(0), "4 full");
  EXPECT_EQ(plan(attention - full - 1), "4 full");
  EXPECT_EQ(plan(attention - full), "1 attention + 3 full");
  EXPECT_EQ(plan(4 * (attention - full)), "4 attention");
  EXPECT_EQ(plan(3 * (attention - full) + attention_mlp - full), "1 attention_mlp + 3 attention");
  EXPECT_EQ(plan(4 * (attention_mlp - full) + (none - attention_mlp)), "1 none + 3 attention_mlp");
  EXPECT_EQ(plan(4 * (none - full)), "4 none");
  EXPECT_EQ(plan(1e30), "4 none");
  {  // a narrower MLP: by way of selective
    LlamaConfig narrow = c;
    narrow.intermediate_size = 159;
    ASSERT_EQ(auto_middle_level(narrow), Recompute::kSelective);
    const double s = 4 * kept_elements(Recompute::kSelective, narrow, rows, lora_z);
    const double n = 4 * kept_elements(Recompute::kNone, narrow, rows, lora_z);
    auto narrow_plan = [&](double budget) {
      return describe_recompute_plan(plan_recompute(narrow, rows, lora_z, 4, budget));
    };
    EXPECT_EQ(narrow_plan(3 * (attention - full) + s - full), "1 selective + 3 attention");
    EXPECT_EQ(narrow_plan(4 * (s - full) + (n - s)), "1 none + 3 selective");
  }
  // Levels only grow with the budget, layer by layer, keeping at most the budget beyond full
  // recompute's.
  std::vector<Recompute> before(4, Recompute::kFull);
  for (double budget = 0; budget <= 4 * none; budget += none / 37) {
    const auto levels = plan_recompute(c, rows, lora_z, 4, budget);
    double kept = 0;
    for (std::size_t l = 0; l < levels.size(); ++l) {
      EXPECT_GE(static_cast<int>(levels[l]), static_cast<int>(before[l])) << budget;
      kept += 4 * kept_elements(levels[l], c, rows, lora_z) - full;
    }
    EXPECT_LE(kept, budget);
    before = levels;
  }
  // The default: 8 bytes per logit, never below the floor (300 x 1000 logits are 2.3 MiB).
  EXPECT_EQ(default_recompute_budget_bytes(c, rows), kRecomputeBudgetFloorBytes);
  EXPECT_EQ(default_recompute_budget_bytes(c, 100000), 100000.0 * 1000 * 8);
  // The resolved plan the model, the estimate and the log share: a negative budget is the
  // default, a fixed mode is every layer's level, kept bytes are the levels' sum.
  const RecomputePlan by_default = make_recompute_plan(Recompute::kAuto, c, rows, lora_z, 4, -1);
  EXPECT_EQ(by_default.budget_bytes, kRecomputeBudgetFloorBytes);
  EXPECT_EQ(by_default.levels, plan_recompute(c, rows, lora_z, 4, kRecomputeBudgetFloorBytes));
  const RecomputePlan large = make_recompute_plan(Recompute::kAuto, c, 100000, lora_z, 4, -1);
  EXPECT_EQ(large.levels, plan_recompute(c, 100000, lora_z, 4, 100000.0 * 1000 * 8));
  const RecomputePlan explicit_budget = make_recompute_plan(
      Recompute::kAuto, c, rows, lora_z, 2, (3 * (attention - full) + attention_mlp - full) / 2);
  EXPECT_EQ(describe_recompute_plan(explicit_budget.levels), "1 attention_mlp + 3 attention");
  EXPECT_EQ(explicit_budget.kept_bytes, (3 * attention + attention_mlp) / 2);
  const RecomputePlan fixed = make_recompute_plan(Recompute::kSelective, c, rows, lora_z, 4, 0);
  EXPECT_EQ(fixed.levels, std::vector<Recompute>(4, Recompute::kSelective));
  EXPECT_EQ(fixed.kept_bytes, 4 * selective);
  EXPECT_EQ(recompute_budget_from_mib(-1), -1);
  EXPECT_EQ(recompute_budget_from_mib(-0.5), -1);
  EXPECT_EQ(recompute_budget_from_mib(2.5), 2.5 * 1048576);
  EXPECT_EQ(parse_recompute("attention", "--x"), Recompute::kAttention);
  EXPECT_EQ(parse_recompute("attention_mlp", "--x"), Recompute::kAttentionMlp);
  try {
    parse_recompute("partial", "--recompute_granularity");
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--recompute_granularity"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("'partial'"), std::string::npos);
  }
}

TEST(Bf16Residual, RefusedInFp32Mode) {
  const Reference ref(testing::fixtures_dir() / "gqa_tied");
  Runtime rt(1);
  auto weights = load_llama_weights<float>(rt, ref.checkpoint);
  ComputeOptions options;
  options.bf16_residual = true;
  EXPECT_THROW(LlamaModel<Fp32Policy>(rt, weights, nullptr, options), ConfigError);
}

}  // namespace
}  // namespace zerolora
