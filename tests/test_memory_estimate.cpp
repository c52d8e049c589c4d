// The memory estimate on a GPU: the GPU's and the host's items apart, the work buffers of small
// micro-batches, evaluation's working set and larger batches, the up-front refusal of a run
// that does not fit, recompute auto's budget from the GPU's free memory, and estimate-memory's
// flags reaching the estimate.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>

#include "apps/cli.hpp"
#include "core/error.hpp"
#include "test_util.hpp"
#include "train/memory_estimate.hpp"

namespace zerolora {
namespace {

// --device cuda: the same weights and activations, now in GPU memory, with the CUDA backend's
// buffers instead of the CPU kernels'; the LoRA state, AdamW, the dataset and the process stay
// on the host and are totalled apart (what the host must hold per rank).
TEST(MemoryEstimate, GpuSplitsGpuAndHostMemory) {
  const LlamaConfig c = preset_config("llama2-70b");
  LoraConfig lora_config;
  lora_config.rank = 4;
  lora_config.dropout = 0.05;
  lora_config.targets = parse_lora_targets("q_proj,k_proj,v_proj,o_proj");
  const LoraLayout lora(c, lora_config);
  MemoryScenario s;
  s.world_size = 8;
  s.micro_batch = 10;
  s.seq_len = 2048;
  const MemoryEstimate cpu = estimate_memory(c, lora, s);
  s.gpu = true;
  const MemoryEstimate gpu = estimate_memory(c, lora, s);
  auto find = [](const MemoryEstimate& e, const std::string& prefix) -> const MemoryItem* {
    for (const auto& i : e.items)
      if (i.name.rfind(prefix, 0) == 0) return &i;
    return nullptr;
  };
  for (const char* shared : {"base weights", "gathered units", "layer inputs", "kept for backward",
                             "one layer's activations", "LoRA parameters", "AdamW moments"}) {
    const MemoryItem* a = find(cpu, shared);
    const MemoryItem* b = find(gpu, shared);
    ASSERT_TRUE(a && b) << shared;
    EXPECT_EQ(a->bytes, b->bytes) << shared;
  }
  EXPECT_EQ(cpu.host_total(), 0.0);
  double host = 0;
  for (const auto& i : gpu.items) {
    const bool lora_state =
        i.name.rfind("LoRA parameters", 0) == 0 || i.name.rfind("LoRA one-layer gather", 0) == 0 ||
        i.name.rfind("whole adapter", 0) == 0 || i.name.rfind("AdamW", 0) == 0 ||
        i.name.rfind("tokenized", 0) == 0 || i.name.rfind("runtime", 0) == 0;
    EXPECT_EQ(i.host, lora_state) << i.name;
    if (i.host) host += i.bytes;
  }
  EXPECT_EQ(gpu.host_total(), host);
  // One layer's LoRA on the GPU: q and o 4 x (8192 + 8192), k and v 4 x (8192 + 1024), fp32,
  // parameters and gradients.
  const MemoryItem* mirror = find(gpu, "LoRA of one layer on the GPU");
  ASSERT_NE(mirror, nullptr);
  EXPECT_EQ(mirror->bytes, 8.0 * 4 * (2 * (8192 + 8192) + 2 * (8192 + 1024)));
  EXPECT_NE(find(gpu, "attention (cuDNN"), nullptr);  // bf16, head dim 128
  EXPECT_EQ(find(gpu, "oneDNN"), nullptr);
  EXPECT_EQ(find(cpu, "attention (cuDNN"), nullptr);
  s.bf16 = false;  // fp32: the reference attention kernel, no bf16 operand buffer
  const MemoryEstimate fp32 = estimate_memory(c, lora, s);
  EXPECT_NE(find(fp32, "attention (reference"), nullptr);
  EXPECT_EQ(find(fp32, "bf16 GEMM operands"), nullptr);
}

// A copy: the estimate is often a temporary.
std::optional<MemoryItem> item_named(const MemoryEstimate& e, const std::string& prefix) {
  for (const auto& i : e.items)
    if (i.name.rfind(prefix, 0) == 0) return i;
  return std::nullopt;
}

// LoRA on q, k, v and o (the seed recipe's targets), the default rank unless given.
LoraLayout qkvo_lora(const LlamaConfig& c, int rank = LoraConfig{}.rank) {
  LoraConfig lora_config;
  lora_config.rank = rank;
  lora_config.targets = parse_lora_targets("q_proj,k_proj,v_proj,o_proj");
  return LoraLayout(c, lora_config);
}

// Llama-2-7B's benchmark micro-batch, 4 x 2048 tokens, on a GPU.
MemoryScenario gpu_4x2048() {
  MemoryScenario s;
  s.gpu = true;
  s.micro_batch = 4;
  s.seq_len = 2048;
  return s;
}

// cuDNN's atomic backward (ZEROLORA_CUDNN_BACKWARD=atomic): its fp32 dQ accumulator, linear in
// the tokens, takes the place of the deterministic backward's dP, quadratic in the segments'
// length; its row sums span the padded rows; one call over every head, so no copy of the
// statistics. At 4 x 2048 the accumulator is the smaller (0.39 GiB against dP's 1 GiB cap), at
// 64 x 128 the larger (against 64 MiB of dP): counting dP alone under-counted it.
TEST(MemoryEstimate, AtomicAttentionBackwardCountsItsAccumulator) {
  const LlamaConfig c = preset_config("llama2-7b");
  const LoraLayout lora = qkvo_lora(c);
  MemoryScenario s = gpu_4x2048();
  const char* variable = "ZEROLORA_CUDNN_BACKWARD";
  auto attention = [&](const char* backward) {
    testing::ScopedEnvironment set(variable, backward);
    return item_named(estimate_memory(c, lora, s), "attention (cuDNN")->bytes;
  };
  const double H = 32, hd = 128, rows = 8192 + 256, gib = 1073741824.0;
  const double fused_accumulator = 4 * ((rows - 1) * (H + 2 * H) * hd + H * hd);
  const double dense_accumulator = 4 * ((rows - 1) * H * hd + H * hd);
  // Deterministic: two copies of the statistics (MHA: a call's heads may start off 16 bytes),
  // row sums over the token bound (8192), dP at the cap.
  const double deterministic = attention(nullptr);
  EXPECT_EQ(attention("deterministic"), deterministic);
  EXPECT_EQ(attention("atomic") - deterministic,
            (4 * rows * H + fused_accumulator) - (4 * rows * H + 4 * 8192 * H + gib));
  EXPECT_EQ(attention("atomic_dense_gradients") - attention("atomic"),
            dense_accumulator - fused_accumulator);
  s.micro_batch = 64;
  s.seq_len = 128;
  EXPECT_GT(attention("atomic") - attention(nullptr), 0.3 * gib);
  try {
    testing::ScopedEnvironment set(variable, "fast");
    estimate_memory(c, lora, s);
    ADD_FAILURE() << "a bad value was taken";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("ZEROLORA_CUDNN_BACKWARD=fast"), std::string::npos);
  }
}

// Below 1024 tokens the GPU's layer work buffers are sized for the micro-batch's rows (the MLP's
// chunk is never longer than the batch): every term then grows with M, so 1024 tokens need
// exactly twice what 512 need.
TEST(MemoryEstimate, GpuWorkBuffersFollowASmallMicroBatch) {
  const LlamaConfig c = preset_config("llama2-7b");
  const LoraLayout lora = qkvo_lora(c);
  MemoryScenario s;
  s.gpu = true;
  s.seq_len = 512;
  const auto small = item_named(estimate_memory(c, lora, s), "layer work buffers");
  ASSERT_TRUE(small);
  const double at_512 = small->bytes;
  s.seq_len = 1024;
  const auto large = item_named(estimate_memory(c, lora, s), "layer work buffers");
  ASSERT_TRUE(large);
  EXPECT_DOUBLE_EQ(large->bytes, 2 * at_512);
}

// Evaluation's forward runs every layer in the one layer's set that recompute uses: where no
// layer recomputes, a run that evaluates holds it all the same (train's eval_strategy or
// do_eval with a validation set; estimate-memory's --eval_strategy), and a larger evaluation
// batch grows the buffers its forward uses to its tokens.
TEST(MemoryEstimate, EvaluationHoldsOneLayersSetAndGrowsTheForwardsBuffers) {
  const LlamaConfig c = preset_config("llama2-7b");
  const LoraLayout lora = qkvo_lora(c);
  MemoryScenario s = gpu_4x2048();
  const double one_layer =
      4.0 * kept_elements(Recompute::kSelective, c, 4 * 2048, LoraZShape::of(&lora.config()));
  s.recompute = Recompute::kNone;
  EXPECT_FALSE(item_named(estimate_memory(c, lora, s), "one layer's activations"));
  s.eval_micro_batch = 4;  // training's tokens: no buffer grows
  const auto evaluated = item_named(estimate_memory(c, lora, s), "one layer's activations");
  ASSERT_TRUE(evaluated);
  EXPECT_EQ(evaluated->name, "one layer's activations (evaluation's forward)");
  EXPECT_EQ(evaluated->bytes, one_layer);
  s.recompute = Recompute::kFull;  // counted once, for both
  const MemoryEstimate full = estimate_memory(c, lora, s);
  EXPECT_EQ(std::count_if(full.items.begin(), full.items.end(),
                          [](const MemoryItem& i) {
                            return i.name.rfind("one layer's activations", 0) == 0;
                          }),
            1);
  EXPECT_EQ(item_named(full, "one layer's activations")->bytes, one_layer);
  auto total = [](const std::vector<std::string>& extra) {
    std::vector<std::string> args{
        "--preset", "llama2-7b", "--device", "cuda", "--gradient_checkpointing", "false"};
    args.insert(args.end(), extra.begin(), extra.end());
    return cli::estimate_memory_report(args)["total_bytes"].get<double>();
  };
  EXPECT_GT(total({"--eval_strategy", "steps", "--per_device_eval_batch_size", "1"}), total({}));
  EXPECT_EQ(total({"--eval_strategy", "no"}), total({}));

  // A larger evaluation batch grows the buffers its forward uses to its tokens, and keeps the
  // backward's (the activations' gradients, the LoRA branch's dz, cuDNN's gradients and
  // workspace), the kept activations and the weights at the training's. (Counting every buffer at
  // the evaluation batch took the backward's 8 times over with HF's defaults, evaluation batches
  // of 8 sequences against training batches of 1; here 8 against 4.)
  s.recompute = Recompute::kNone;
  const MemoryEstimate train_only = estimate_memory(c, lora, s);
  s.eval_micro_batch = 8;
  const MemoryEstimate with_eval = estimate_memory(c, lora, s);
  MemoryScenario eight = s;
  eight.micro_batch = 8;
  eight.eval_micro_batch = 0;
  eight.recompute = Recompute::kFull;
  const MemoryEstimate at_eight = estimate_memory(c, lora, eight);
  EXPECT_EQ(item_named(with_eval, "one layer's activations")->bytes,
            item_named(at_eight, "one layer's activations")->bytes);
  // Partly the forward's: cuDNN's forward copies and statistics, the layer working copies, the
  // producers' rounded operands (the norms' buffer takes the backward's d(q/k/v) too).
  for (const char* grown : {"attention (cuDNN", "layer inputs", "bf16 GEMM operands rounded"}) {
    EXPECT_GT(item_named(with_eval, grown)->bytes, item_named(train_only, grown)->bytes) << grown;
    EXPECT_LT(item_named(with_eval, grown)->bytes, item_named(at_eight, grown)->bytes) << grown;
  }
  // Wholly the forward's, or the backward's part by chunks of the same rows in both passes.
  for (const char* grown : {"fused lm_head", "tokens, positions"}) {
    EXPECT_GT(item_named(with_eval, grown)->bytes, item_named(train_only, grown)->bytes) << grown;
    EXPECT_EQ(item_named(with_eval, grown)->bytes, item_named(at_eight, grown)->bytes) << grown;
  }
  // The layer inputs: every layer's bf16 copy at the training's 4 x 2048 tokens, the two fp32
  // working copies at evaluation's 8 x 2048.
  const double D = static_cast<double>(c.hidden_size), L = static_cast<double>(c.num_layers);
  const double I = static_cast<double>(c.intermediate_size), Qd = static_cast<double>(c.q_dim());
  EXPECT_DOUBLE_EQ(item_named(with_eval, "layer inputs")->bytes,
                   2.0 * (L + 1) * 4 * 2048 * D + 4.0 * 2 * 8 * 2048 * D);
  // The producers' rounded operands: the norm's output at evaluation's tokens or d(q/k/v) at
  // the training's, in one buffer; the attention's and SwiGLU's output (a 1024-row chunk) at
  // evaluation's tokens; SwiGLU's gradient (a chunk) the backward's.
  const double W3 = static_cast<double>(c.q_dim() + 2 * c.kv_dim());
  EXPECT_DOUBLE_EQ(item_named(with_eval, "bf16 GEMM operands rounded")->bytes,
                   2.0 * std::max(4 * 2048 * W3, 8 * 2048 * D) + 2.0 * (8 * 2048 * Qd + 1024 * I) +
                       2.0 * 1024 * 2 * I);
  // The layer work buffers too: the forward's are the MLP's 1024-row chunks, both batches'.
  for (const char* kept :
       {"kept for backward", "base weights", "LoRA branch scratch", "layer work buffers"})
    EXPECT_EQ(item_named(with_eval, kept)->bytes, item_named(train_only, kept)->bytes) << kept;
  EXPECT_GT(with_eval.total(), train_only.total());

  // Under 1024 training rows the MLP's chunk follows the rows: evaluation's 8 x 512 grows the
  // forward's chunks (gate/up) to 1024 rows, and keeps the backward's
  // (d_act; dh, d_attn, d_qkv and the residual's gradient, per token) at the training's 512.
  MemoryScenario short_rows = s;
  short_rows.micro_batch = 1;
  short_rows.seq_len = 512;
  short_rows.eval_micro_batch = 8;
  EXPECT_DOUBLE_EQ(item_named(estimate_memory(c, lora, short_rows), "layer work buffers")->bytes,
                   4.0 * 1024 * 2 * I + 4.0 * 512 * I + 4.0 * 512 * (D + Qd + W3 + D));
}

// On a GPU the estimate's GPU items, times the ranks sharing the GPU, must fit what it had free:
// refused otherwise, naming the GPU, both figures and the escape.
TEST(MemoryEstimate, GpuRunThatDoesNotFitIsRefused) {
  const LlamaConfig c = preset_config("llama2-7b");
  const LoraLayout lora = qkvo_lora(c);
  const MemoryScenario s = gpu_4x2048();
  const MemoryEstimate e = estimate_memory(c, lora, s);
  const double need = e.total();
  ASSERT_GT(need, 13e9);  // the bf16 weights alone
  const std::string gpu = "cuda:0 (Test GPU)";
  EXPECT_NO_THROW(require_device_memory_fits(e, s, gpu, need * 1.001, 1));
  EXPECT_NO_THROW(require_device_memory_fits(e, s, gpu, 2.001 * need, 2));
  auto refusal = [&](double free_bytes, int ranks) {
    try {
      require_device_memory_fits(e, s, gpu, free_bytes, ranks);
    } catch (const ResourceError& error) {
      return std::string(error.what());
    }
    return std::string("accepted");
  };
  const std::string alone = refusal(need * 0.999, 1);
  char need_gib[32];
  std::snprintf(need_gib, sizeof(need_gib), "%.2f", need / 1073741824.0);
  EXPECT_NE(alone.find("needs about " + std::string(need_gib) +
                       " GiB of GPU memory per rank (micro-batch 4 x 2048 tokens; largest: base "
                       "weights (whole)"),
            std::string::npos)
      << alone;
  EXPECT_NE(alone.find("free on cuda:0 (Test GPU). "), std::string::npos) << alone;
  EXPECT_NE(alone.find("--check_memory false"), std::string::npos) << alone;
  EXPECT_EQ(alone.find("ranks on this GPU"), std::string::npos) << alone;
  const std::string shared = refusal(1.999 * need, 2);
  EXPECT_NE(shared.find(" x 2 ranks on this GPU = "), std::string::npos) << shared;
  EXPECT_NE(shared.find("Run fewer ranks on each GPU"), std::string::npos) << shared;
  EXPECT_EQ(alone.find("Run fewer ranks"), std::string::npos) << alone;
  // The host items (LoRA state, AdamW, the data) are the host check's, not the GPU's.
  EXPECT_GT(e.host_total(), 0.0);
  EXPECT_NO_THROW(require_device_memory_fits(e, s, gpu, need, 1));
}

// On a GPU, recompute auto's default budget spends the free memory beyond the run at full
// recompute, less the margin: the run then fits what was free less the margin, keeps more the
// more is free (up to everything), and where nothing is left beyond full recompute keeps
// nothing, even below the host default (a run that fits at full recompute is never refused for
// its default budget; one that does not is refused at full recompute's need). estimate-memory's
// --device_memory_gb plays the free memory.
TEST(MemoryEstimate, GpuRecomputeBudgetFillsTheFreeMemory) {
  const LlamaConfig c = preset_config("llama2-7b");
  const LoraLayout lora = qkvo_lora(c, 4);  // estimate-memory's default rank, the seed's
  const MemoryScenario s = gpu_4x2048();
  const double rows = 4 * 2048, host_default = default_recompute_budget_bytes(c, rows);
  auto planned = [&](double budget) {
    return make_recompute_plan(Recompute::kAuto, c, rows, LoraZShape::of(&lora.config()),
                               sizeof(float), budget);
  };
  MemoryScenario full = s;
  full.recompute = Recompute::kFull;
  const double full_total = estimate_memory(c, lora, full).total();
  double previous_kept = -1;
  // 20 GB: not even full recompute fits; 24 GB: under 2 GB to spend, less than the host default
  // (spent all the same).
  for (double free_gb : {20.0, 24.0, 40.0, 80.0, 141.0, 400.0}) {
    const double free = free_gb * 1e9;
    const double budget = gpu_recompute_budget_bytes(c, lora, s, free);
    const double usable =
        free - std::max(kGpuRecomputeMargin * free, kGpuRecomputeMarginFloorBytes);
    EXPECT_NEAR(budget, std::max(usable - full_total, 0.0), 1.0) << free_gb << " GB";
    MemoryScenario fitted = s;
    fitted.recompute_budget_bytes = budget;
    if (budget > 0) {
      EXPECT_LE(estimate_memory(c, lora, fitted).total(), usable) << free_gb << " GB";
    } else {
      EXPECT_EQ(estimate_memory(c, lora, fitted).total(), full_total) << free_gb << " GB";
    }
    const RecomputePlan plan = planned(budget);
    EXPECT_GE(plan.kept_bytes, previous_kept) << free_gb << " GB";
    previous_kept = plan.kept_bytes;
  }
  EXPECT_EQ(describe_recompute_plan(planned(gpu_recompute_budget_bytes(c, lora, s, 400e9)).levels),
            "32 none");
  EXPECT_EQ(gpu_recompute_budget_bytes(c, lora, s, 10e9), 0.0)
      << "the 7B's weights alone pass 10 GB";
  // Qwen2.5-7B on one sequence of 32,768 tokens in 80 GB: 43 GiB at full recompute; the host
  // default (8 bytes per logit of its 152,064-word vocabulary, 37 GiB) would not fit beside it.
  {
    const LlamaConfig qwen = preset_config("qwen2.5-7b");
    const LoraLayout qwen_lora = qkvo_lora(qwen, 4);
    MemoryScenario long_context = s;
    long_context.micro_batch = 1;
    long_context.seq_len = 32768;
    const double free = 80e9, usable = free - kGpuRecomputeMargin * free;
    long_context.recompute_budget_bytes = default_recompute_budget_bytes(qwen, 32768);
    EXPECT_GT(estimate_memory(qwen, qwen_lora, long_context).total(), usable);
    long_context.recompute_budget_bytes =
        gpu_recompute_budget_bytes(qwen, qwen_lora, long_context, free);
    EXPECT_GT(long_context.recompute_budget_bytes, 0.0);
    EXPECT_LE(estimate_memory(qwen, qwen_lora, long_context).total(), usable);
  }
  // The scenario's own mode and device do not matter: the budget is auto's on a GPU.
  MemoryScenario cpu_full = s;
  cpu_full.gpu = false;
  cpu_full.recompute = Recompute::kFull;
  EXPECT_EQ(gpu_recompute_budget_bytes(c, lora, cpu_full, 80e9),
            gpu_recompute_budget_bytes(c, lora, s, 80e9));

  // estimate-memory: its JSON's recompute budget, the plan's and the kept item's bytes.
  auto budget_of = [](const std::vector<std::string>& extra) {
    std::vector<std::string> args{"--preset", "llama2-7b",        "--per_device_train_batch_size",
                                  "4",        "--max_seq_length", "2048"};
    args.insert(args.end(), extra.begin(), extra.end());
    const nlohmann::ordered_json report = cli::estimate_memory_report(args);
    double kept_item = 0;
    for (const auto& item : report["items"])
      if (item["name"].get<std::string>().rfind("kept for backward", 0) == 0)
        kept_item = item["bytes"].get<double>();
    EXPECT_EQ(report["recompute"]["kept_bytes"].get<double>(), kept_item);
    return report["recompute"]["budget_bytes"].get<double>();
  };
  EXPECT_EQ(budget_of({"--device", "cuda", "--device_memory_gb", "80"}),
            gpu_recompute_budget_bytes(c, lora, s, 80e9));
  EXPECT_EQ(budget_of({"--device", "cuda", "--recompute_budget_mib", "1000"}), 1000 * 1048576.0)
      << "a budget given is kept";
  EXPECT_EQ(budget_of({"--device_memory_gb", "80"}), host_default) << "on the CPU the host default";
}

// On a GPU above rank 16, estimate-memory --lora_dropout 0 counts no dropped copies of the LoRA
// inputs (train's default 0.05 does).
TEST(MemoryEstimate, LoraDropoutFlagReachesTheEstimate) {
  auto scratch = [](const std::vector<std::string>& extra) {
    std::vector<std::string> args{"--preset", "llama2-7b", "--device", "cuda"};
    args.insert(args.end(), extra.begin(), extra.end());
    const nlohmann::ordered_json report = cli::estimate_memory_report(args);
    for (const auto& item : report["items"])
      if (item["name"].get<std::string>().rfind("LoRA branch scratch", 0) == 0)
        return item["bytes"].get<double>();
    ADD_FAILURE() << "no LoRA branch scratch item";
    return 0.0;
  };
  // Above rank 16 the GPU's branch keeps a dropped copy of the input; up to it (the fused
  // kernels of src/cuda/lora.cu, the mask made on the fly) dropout costs no memory.
  const double dropout_default = scratch({"--lora_rank", "32"}),
               no_dropout = scratch({"--lora_rank", "32", "--lora_dropout", "0"});
  EXPECT_GT(dropout_default, no_dropout);
  EXPECT_EQ(scratch({"--lora_rank", "32", "--lora_dropout", "0.05"}), dropout_default);
  EXPECT_EQ(scratch({}), scratch({"--lora_dropout", "0"}));
  EXPECT_THROW(scratch({"--lora_dropout", "1"}), UsageError);
}

}  // namespace
}  // namespace zerolora
