// Training configuration: LR schedules against transformers' get_scheduler, the DeepSpeed
// config merge (the seed recipe's llama2_ds_zero3_config.json as is, "auto", consistency,
// refusals), and PEFT adapter files (round trip, adapters for another base, PEFT features
// zerolora does not implement), and the memory estimate on a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>

#include "apps/cli.hpp"
#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "lora/peft_adapter.hpp"
#include "test_util.hpp"
#include "train/memory_estimate.hpp"
#include "train/training_args.hpp"

namespace zerolora {
namespace {

using json = nlohmann::json;

TEST(LrSchedule, MatchesTransformersGetScheduler) {
  // transformers 5.24: get_scheduler(name, AdamW(lr=1e-3), num_warmup_steps=3,
  // num_training_steps=10), the lr of each of the 10 optimizer steps.
  const std::vector<double> linear{0.0,
                                   0.0003333333333,
                                   0.0006666666667,
                                   0.001,
                                   0.0008571428571,
                                   0.0007142857143,
                                   0.0005714285714,
                                   0.0004285714286,
                                   0.0002857142857,
                                   0.0001428571429};
  const std::vector<double> cosine{0.0,
                                   0.0003333333333,
                                   0.0006666666667,
                                   0.001,
                                   0.000950484434,
                                   0.0008117449009,
                                   0.000611260467,
                                   0.000388739533,
                                   0.0001882550991,
                                   4.951556605e-05};
  for (const auto& [kind, expected] : {std::pair{LrSchedule::Kind::kLinear, linear},
                                       std::pair{LrSchedule::Kind::kCosine, cosine}}) {
    LrSchedule s;
    s.kind = kind;
    s.lr = 1e-3;
    s.warmup_steps = 3;
    s.total_steps = 10;
    for (int i = 0; i < 10; ++i)
      EXPECT_NEAR(s.at(i), expected[i], 1e-12) << s.describe() << " step " << i;
  }
  LrSchedule c;
  c.kind = LrSchedule::Kind::kConstantWithWarmup;
  c.lr = 2.0;
  c.warmup_steps = 4;
  EXPECT_DOUBLE_EQ(c.at(1), 0.5);
  EXPECT_DOUBLE_EQ(c.at(9), 2.0);
  EXPECT_EQ(resolve_warmup_steps(0, 0.03, 1000), 30);
  EXPECT_EQ(resolve_warmup_steps(0, 0.03, 101), 4);  // ceil, as HF
  EXPECT_EQ(resolve_warmup_steps(7, 0.5, 100), 7);
  EXPECT_THROW(parse_hf_scheduler("polynomial"), UsageError);
}

TEST(LrSchedule, DeepSpeedSchedulers) {
  LrSchedule s;
  s.kind = LrSchedule::Kind::kWarmupLR;
  s.lr = 1.0;
  s.warmup_min_lr = 0.0;
  s.warmup_steps = 100;
  EXPECT_NEAR(s.at(9), std::log(10.0) / std::log(100.0), 1e-12);  // log warmup
  EXPECT_DOUBLE_EQ(s.at(500), 1.0);
  s.kind = LrSchedule::Kind::kWarmupDecayLR;
  s.total_steps = 200;
  s.log_warmup = false;
  EXPECT_DOUBLE_EQ(s.at(50), 0.5);
  EXPECT_DOUBLE_EQ(s.at(150), 0.5);
  s.kind = LrSchedule::Kind::kWarmupCosineLR;
  s.cos_min_ratio = 0.1;
  EXPECT_NEAR(s.at(200), 0.1, 1e-12);
}

json load(const std::filesystem::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

TEST(DeepSpeedConfig, SeedRecipeConfigAsIs) {
  TrainingArguments a;
  a.per_device_train_batch_size = 10;
  a.explicitly_set = {"per_device_train_batch_size"};
  const auto ds =
      load(std::filesystem::path(ZEROLORA_SOURCE_DIR) / "examples" / "ds_zero3_seed.json");
  const auto result = apply_deepspeed_config(ds, a, 8, 8192, 856'000'000, "ds.json");
  EXPECT_EQ(a.per_device_train_batch_size, 10);
  EXPECT_EQ(a.gradient_accumulation_steps, 1);
  EXPECT_TRUE(a.bf16);
  EXPECT_DOUBLE_EQ(a.max_grad_norm, 1.0);
  EXPECT_EQ(a.zero_stage, 3);
  EXPECT_EQ(a.prefetch_depth,
            1);  // auto bucket 0.9 * 8192^2 is under one 70B layer: one unit ahead
  EXPECT_EQ(a.logging_steps, 64);  // steps_per_print, --logging_steps not given
  const std::set<std::string> ignored(result.ignored_keys.begin(), result.ignored_keys.end());
  EXPECT_EQ(ignored,
            (std::set<std::string>{"timers", "zero_optimization.overlap_comm",
                                   "zero_optimization.contiguous_gradients",
                                   "zero_optimization.stage3_gather_16bit_weights_on_model_save"}));
  EXPECT_FALSE(result.scheduler.has_value());
}

template <class E>
void expect_ds_error(const json& ds, TrainingArguments a, int world, const std::string& fragment) {
  try {
    apply_deepspeed_config(ds, a, world, 64, 10000, "ds.json");
    FAIL() << "accepted " << ds.dump();
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("ds.json"), std::string::npos) << e.what();
  }
}

TEST(DeepSpeedConfig, BatchArithmeticIsCheckedAndDerived) {
  TrainingArguments a;
  a.per_device_train_batch_size = 10;
  a.gradient_accumulation_steps = 2;
  expect_ds_error<ConfigError>(json{{"train_batch_size", 100}}, a, 8,
                               "train_batch_size 100 != train_micro_batch_size_per_gpu 10 x "
                               "gradient_accumulation_steps 2 x world size 8 = 160");
  TrainingArguments b;
  b.per_device_train_batch_size = 4;
  apply_deepspeed_config(json{{"train_batch_size", 64}, {"train_micro_batch_size_per_gpu", 4}}, b,
                         4, 64, 10000, "ds.json");
  EXPECT_EQ(b.gradient_accumulation_steps, 4);  // 64 / (4 x 4)
  TrainingArguments c;
  expect_ds_error<ConfigError>(
      json{{"train_batch_size", 30}, {"train_micro_batch_size_per_gpu", 4}}, c, 4,
      "not a multiple");
  TrainingArguments d;
  d.per_device_train_batch_size = 2;
  d.explicitly_set = {"per_device_train_batch_size"};
  expect_ds_error<ConfigError>(
      json{{"train_micro_batch_size_per_gpu", 3}}, d, 1,
      "'train_micro_batch_size_per_gpu' is 3 but --per_device_train_batch_size is 2");
}

TEST(DeepSpeedConfig, OptimizerSchedulerAndZeroSettings) {
  TrainingArguments a;
  a.learning_rate = 3e-4;
  const json ds{
      {"optimizer",
       {{"type", "AdamW"},
        {"params",
         {{"lr", "auto"}, {"betas", {0.9, 0.95}}, {"eps", 1e-6}, {"weight_decay", 0.1}}}}},
      {"scheduler",
       {{"type", "WarmupDecayLR"},
        {"params",
         {{"warmup_num_steps", 10}, {"warmup_type", "linear"}, {"total_num_steps", "auto"}}}}},
      {"zero_optimization",
       {{"stage", 3},
        {"stage3_param_persistence_threshold", 0},
        {"stage3_max_live_parameters", 5000},
        {"stage3_prefetch_bucket_size", 25000},
        {"offload_optimizer", {{"device", "cpu"}}}}}};
  const auto r = apply_deepspeed_config(ds, a, 2, 64, 10000, "ds.json");
  EXPECT_DOUBLE_EQ(a.learning_rate, 3e-4);
  EXPECT_DOUBLE_EQ(a.adam_beta2, 0.95);
  EXPECT_DOUBLE_EQ(a.adam_epsilon, 1e-6);
  EXPECT_DOUBLE_EQ(a.weight_decay, 0.1);
  EXPECT_EQ(a.persistence_threshold, 0);
  EXPECT_EQ(a.max_live_elements, 5000);
  EXPECT_EQ(a.prefetch_depth, 3);  // 25000 elements ahead = 2.5 layers of 10000, rounded
  EXPECT_EQ(r.notes.size(), 1u);   // cpu offload changes nothing on a CPU engine
  ASSERT_TRUE(r.scheduler.has_value());
  const LrSchedule s = make_lr_schedule(a, r.scheduler, 110);
  EXPECT_EQ(s.kind, LrSchedule::Kind::kWarmupDecayLR);
  EXPECT_EQ(s.warmup_steps, 10);
  EXPECT_EQ(s.total_steps, 110);
  EXPECT_NEAR(s.at(60), 3e-4 * 0.5, 1e-15);
}

TEST(DeepSpeedConfig, RefusesWhatIsNotSupported) {
  const TrainingArguments a;
  expect_ds_error<UnsupportedError>(json{{"fp16", {{"enabled", true}}}}, a, 1, "fp16");
  expect_ds_error<UnsupportedError>(json{{"optimizer", {{"type", "Lamb"}}}}, a, 1, "Lamb");
  expect_ds_error<UnsupportedError>(json{{"scheduler", {{"type", "OneCycle"}}}}, a, 1, "OneCycle");
  expect_ds_error<UnsupportedError>(
      json{{"zero_optimization", {{"stage", 3}, {"offload_param", {{"device", "nvme"}}}}}}, a, 1,
      "nvme");
  expect_ds_error<ConfigError>(json{{"zero_optimization", {{"stage", 4}}}}, a, 1, "stage");
  expect_ds_error<ConfigError>(json{{"gradient_clipping", "big"}}, a, 1,
                               "'gradient_clipping' must be a number");
  expect_ds_error<ConfigError>(json::array(), a, 1, "JSON object");
}

TEST(PeftAdapter, RoundTripAndRefusals) {
  testing::TempDir dir;
  LlamaConfig base;
  base.hidden_size = 16;
  base.intermediate_size = 24;
  base.num_layers = 2;
  base.num_heads = 2;
  base.num_kv_heads = 1;
  base.head_dim = 8;
  base.vocab_size = 32;
  LoraConfig lora;
  lora.rank = 2;
  lora.alpha = 5;
  lora.targets = parse_lora_targets("q_proj,down_proj");
  lora.use_rslora = true;
  const LoraLayout layout(base, lora);
  std::vector<float> params(static_cast<std::size_t>(layout.size()));
  for (std::size_t i = 0; i < params.size(); ++i) params[i] = 0.01f * static_cast<float>(i % 17);
  save_peft_adapter(dir.path(), layout, params, "base/model");
  const auto config = load(dir / "adapter_config.json");
  EXPECT_EQ(config["peft_type"], "LORA");
  EXPECT_EQ(config["task_type"], "CAUSAL_LM");
  EXPECT_EQ(config["r"], 2);
  EXPECT_EQ(config["target_modules"], (json{"q_proj", "down_proj"}));
  EXPECT_EQ(SafetensorsFile(dir / "adapter_model.safetensors").metadata().at("format"), "pt");

  const PeftAdapter loaded = load_peft_adapter(dir.path(), base);
  EXPECT_EQ(loaded.params, params);
  EXPECT_EQ(loaded.config.rank, 2);
  EXPECT_TRUE(loaded.config.use_rslora);
  EXPECT_EQ(loaded.config.targets, lora.targets);
  EXPECT_EQ(loaded.base_model_name_or_path, "base/model");

  LlamaConfig other = base;  // another base: wider hidden
  other.hidden_size = 32;
  other.head_dim = 16;
  try {
    load_peft_adapter(dir.path(), other);
    FAIL();
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("another base model"), std::string::npos) << e.what();
  }
  LlamaConfig shallow = base;
  shallow.num_layers = 1;
  EXPECT_THROW(load_peft_adapter(dir.path(), shallow),
               ShapeError);  // layer 1 tensors do not exist there

  auto with = [&](const char* key, json value) {
    json c = config;
    c[key] = value;
    std::ofstream(dir / "adapter_config.json") << c.dump();
  };
  with("use_dora", true);
  EXPECT_THROW(load_peft_adapter(dir.path(), base), UnsupportedError);
  with("modules_to_save", json{"lm_head"});
  EXPECT_THROW(load_peft_adapter(dir.path(), base), UnsupportedError);
  with("peft_type", "IA3");
  EXPECT_THROW(load_peft_adapter(dir.path(), base), UnsupportedError);
  EXPECT_THROW(load_peft_adapter(dir / "nope", base), IoError);

  // A non-finite adapter is never written (the earlier one stays as it was) nor loaded.
  std::ofstream(dir / "adapter_config.json") << config.dump();
  const std::string before = testing::read_file(dir / "adapter_model.safetensors");
  std::vector<float> broken = params;
  broken[5] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(save_peft_adapter(dir.path(), layout, broken, "base/model"), NumericalError);
  EXPECT_EQ(testing::read_file(dir / "adapter_model.safetensors"), before);
  {
    SafetensorsWriter writer;
    for (const auto& e : layout.entries()) {
      std::vector<float> values(broken.begin() + e.offset, broken.begin() + e.offset + e.numel());
      if (e.offset == 0) values[3] = std::numeric_limits<float>::quiet_NaN();
      writer.add<float>(e.name, DType::kF32, {e.rows, e.cols}, std::span<const float>(values));
    }
    writer.write(dir / "adapter_model.safetensors");
  }
  try {
    load_peft_adapter(dir.path(), base);
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("holds nan at element 3"), std::string::npos) << e.what();
  }
}

// Every numeric argument in range, NaN and Inf refused, each named by its flag; and a run
// must have something to train.
TEST(TrainingArguments, RangesAreChecked) {
  EXPECT_NO_THROW(check_training_arguments(TrainingArguments{}));
  auto refused = [](auto set, const std::string& flag) {
    TrainingArguments a;
    set(a);
    try {
      check_training_arguments(a);
      ADD_FAILURE() << flag << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("--" + flag + " "), std::string::npos) << e.what();
    }
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  refused([&](auto& a) { a.learning_rate = nan; }, "learning_rate");
  refused([&](auto& a) { a.learning_rate = inf; }, "learning_rate");
  refused([&](auto& a) { a.learning_rate = -1; }, "learning_rate");
  refused([&](auto& a) { a.adam_beta1 = 1; }, "adam_beta1");
  refused([&](auto& a) { a.adam_epsilon = nan; }, "adam_epsilon");
  refused([&](auto& a) { a.max_grad_norm = nan; }, "max_grad_norm");
  refused([&](auto& a) { a.warmup_ratio = 1.5; }, "warmup_ratio");
  refused([&](auto& a) { a.lora_dropout = 1; }, "lora_dropout");
  refused([&](auto& a) { a.per_device_train_batch_size = 0; }, "per_device_train_batch_size");
  refused([&](auto& a) { a.gradient_accumulation_steps = -1; }, "gradient_accumulation_steps");
  refused([&](auto& a) { a.num_train_epochs = nan; }, "num_train_epochs");
  refused(
      [&](auto& a) {
        a.num_train_epochs = 0;
        a.max_steps = 0;
      },
      "num_train_epochs");
  TrainingArguments steps_only;
  steps_only.num_train_epochs = 0;
  steps_only.max_steps = 3;
  EXPECT_NO_THROW(check_training_arguments(steps_only));
}

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
// batch grows the buffers to its tokens.
TEST(MemoryEstimate, EvaluationHoldsOneLayersSetAndGrowsTheBuffers) {
  const LlamaConfig c = preset_config("llama2-7b");
  const LoraLayout lora = qkvo_lora(c);
  MemoryScenario s = gpu_4x2048();
  const double one_layer =
      4.0 * kept_elements(Recompute::kSelective, c, 4 * 2048, lora.config().rank);
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

  // A larger evaluation batch grows every buffer that follows the tokens to its size, and keeps
  // the training's kept activations and weights as they are.
  s.recompute = Recompute::kNone;
  const MemoryEstimate train_only = estimate_memory(c, lora, s);
  s.eval_micro_batch = 8;
  const MemoryEstimate with_eval = estimate_memory(c, lora, s);
  MemoryScenario eight = s;
  eight.micro_batch = 8;
  eight.eval_micro_batch = 0;
  eight.recompute = Recompute::kFull;
  const MemoryEstimate at_eight = estimate_memory(c, lora, eight);
  for (const char* grown : {"layer work buffers", "attention (cuDNN", "one layer's activations"})
    EXPECT_EQ(item_named(with_eval, grown)->bytes, item_named(at_eight, grown)->bytes) << grown;
  for (const char* kept : {"kept for backward", "base weights"})
    EXPECT_EQ(item_named(with_eval, kept)->bytes, item_named(train_only, kept)->bytes) << kept;
  EXPECT_GT(with_eval.total(), train_only.total());
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
// more is free (up to everything), and where even full recompute does not fit, falls back to
// the host default (the memory check then refuses the run as before). estimate-memory's
// --device_memory_gb plays the free memory.
TEST(MemoryEstimate, GpuRecomputeBudgetFillsTheFreeMemory) {
  const LlamaConfig c = preset_config("llama2-7b");
  const LoraLayout lora = qkvo_lora(c, 4);  // estimate-memory's default rank, the seed's
  const MemoryScenario s = gpu_4x2048();
  const double rows = 4 * 2048, host_default = default_recompute_budget_bytes(c, rows);
  auto planned = [&](double budget) {
    return make_recompute_plan(Recompute::kAuto, c, rows, 4, sizeof(float), budget);
  };
  MemoryScenario full = s;
  full.recompute = Recompute::kFull;
  const double full_total = estimate_memory(c, lora, full).total();
  double previous_kept = -1;
  // 20 GB: not even full recompute fits; 24 GB: under 2 GB to spend, less than the host default.
  for (double free_gb : {20.0, 24.0, 40.0, 80.0, 141.0, 400.0}) {
    const double free = free_gb * 1e9;
    const double budget = gpu_recompute_budget_bytes(c, lora, s, free);
    const double usable =
        free - std::max(kGpuRecomputeMargin * free, kGpuRecomputeMarginFloorBytes);
    EXPECT_NEAR(budget, std::max(usable - full_total, host_default), 1.0) << free_gb << " GB";
    MemoryScenario fitted = s;
    fitted.recompute_budget_bytes = budget;
    if (budget > host_default) {
      EXPECT_LE(estimate_memory(c, lora, fitted).total(), usable) << free_gb << " GB";
    }
    const RecomputePlan plan = planned(budget);
    EXPECT_GE(plan.kept_bytes, previous_kept) << free_gb << " GB";
    previous_kept = plan.kept_bytes;
  }
  EXPECT_EQ(describe_recompute_plan(planned(gpu_recompute_budget_bytes(c, lora, s, 400e9)).levels),
            "32 none");
  EXPECT_EQ(gpu_recompute_budget_bytes(c, lora, s, 10e9), host_default)
      << "the 7B's weights alone pass 10 GB";
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
