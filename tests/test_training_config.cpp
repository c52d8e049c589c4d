// Training configuration: LR schedules against transformers' get_scheduler, the DeepSpeed
// config merge (the seed recipe's llama2_ds_zero3_config.json as is, "auto", consistency,
// refusals), PEFT adapter files (round trip, adapters for another base, PEFT features
// zerolora does not implement), and the training arguments' ranges (the memory estimate:
// test_memory_estimate.cpp).
#include <gtest/gtest.h>

#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "lora/peft_adapter.hpp"
#include "test_util.hpp"
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

}  // namespace
}  // namespace zerolora
