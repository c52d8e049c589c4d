// The training configuration, with Hugging Face TrainingArguments / run_lora_clm names and
// defaults (where zerolora differs, the field says so), and the merge of a DeepSpeed config
// file into it the way HF's DeepSpeed integration does: "auto" values are filled from the
// flags, concrete values must agree with flags given explicitly (otherwise they set them),
// batch sizes must multiply out, unsupported values are refused, and keys that mean nothing
// here are reported in one warning.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "train/lr_schedule.hpp"

namespace zerolora {

struct TrainingArguments {
  // batches
  std::int64_t per_device_train_batch_size = 8;
  std::int64_t per_device_eval_batch_size = 8;
  std::int64_t gradient_accumulation_steps = 1;
  // optimizer (torch AdamW) and schedule
  double learning_rate = 5e-5;
  double weight_decay = 0.0;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_epsilon = 1e-8;
  double max_grad_norm = 1.0;
  std::string lr_scheduler_type = "linear";
  double warmup_ratio = 0.0;
  std::int64_t warmup_steps = 0;
  // length
  double num_train_epochs = 3.0;
  std::int64_t max_steps = -1;
  // precision and memory
  bool bf16 = true;                    // zerolora's default (HF: false); --bf16 false for fp32
  bool gradient_checkpointing = true;  // zerolora's default (HF: false): recompute each layer
  // What each layer keeps for backward with gradient checkpointing (model/recompute_plan.hpp):
  // auto, full, attention, attention_mlp or selective; auto's budget in MiB (< 0: its default).
  std::string recompute_granularity = "auto";
  double recompute_budget_mib = -1;
  bool attn_softmax_bf16 = false;
  // Residual stream between layers, and the layer inputs kept for backward: auto (bf16 with
  // --bf16, fp32 without), bf16 or fp32.
  std::string residual_dtype = "auto";
  // LoRA (run_lora_clm names)
  int lora_rank = 8;
  double lora_alpha = 16;
  double lora_dropout = 0.05;
  std::vector<std::string> lora_target_modules{"q_proj", "v_proj"};
  bool use_rslora = false;
  // ZeRO
  int zero_stage = 3;
  int prefetch_depth = 1;                       // from stage3_prefetch_bucket_size
  std::int64_t max_live_elements = 0;           // stage3_max_live_parameters (0: no cap)
  std::int64_t persistence_threshold = 100000;  // stage3_param_persistence_threshold
  // logging, evaluation, saving
  std::int64_t logging_steps = 10;  // zerolora's default (HF: 500)
  std::string eval_strategy = "no";
  std::int64_t eval_steps = 0;
  double eval_delay = 0;  // no evaluation before this many epochs (steps with eval_strategy steps)
  std::string save_strategy = "steps";
  std::int64_t save_steps = 500;
  std::int64_t save_total_limit = 0;
  std::int64_t throughput_warmup_steps = 1;  // steps left out of throughput figures
  std::uint64_t seed = 42;
  // data order
  bool group_by_length = false;       // shuffled megabatches sorted by length (HF's)
  bool dataloader_drop_last = false;  // drop an incomplete last global batch (else it wraps)
  // A step whose loss or gradient norm is NaN or Inf makes no update; up to this many such
  // steps are skipped and counted (as mixed-precision trainers do), then the run stops. 0:
  // stop at the first (zerolora's default).
  std::int64_t skip_nonfinite_steps = 0;

  std::set<std::string> explicitly_set;  // flag names given on the command line
  bool is_set(const std::string& flag) const { return explicitly_set.count(flag) > 0; }
};

// A DeepSpeed scheduler, resolved once the total number of steps is known.
struct DeepSpeedScheduler {
  LrSchedule::Kind kind;
  std::optional<double> warmup_min_lr, warmup_max_lr, warmup_min_ratio, cos_min_ratio;
  std::optional<std::int64_t> warmup_num_steps, total_num_steps;
  bool log_warmup = true;
};

struct DeepSpeedResult {
  std::vector<std::string> ignored_keys;  // meaningless here: for one warning
  std::vector<std::string> notes;         // informational (e.g. CPU offload on a CPU engine)
  std::optional<DeepSpeedScheduler> scheduler;
};

// Applies a parsed ds_config to args. `label` names the file in errors; hidden_size and
// layer_elements resolve the "auto" ZeRO sizes as HF does.
DeepSpeedResult apply_deepspeed_config(const nlohmann::json& config, TrainingArguments& args,
                                       int world_size, std::int64_t hidden_size,
                                       std::int64_t layer_elements, const std::string& label);

// The schedule for `total_steps` optimizer steps: the DeepSpeed scheduler when given, else the
// HF one named by args.lr_scheduler_type.
LrSchedule make_lr_schedule(const TrainingArguments& args,
                            const std::optional<DeepSpeedScheduler>& ds, std::int64_t total_steps);

// Every numeric argument in its range (NaN and Inf refused), named by its flag, and a run that
// has something to train: throws ConfigError. The command line checks the same at parse time;
// this holds for every other way arguments arrive (a DeepSpeed config, the library).
void check_training_arguments(const TrainingArguments& args);

// --residual_dtype (auto, bf16, fp32) against --bf16 (which a DeepSpeed config may have set):
// true for a bf16 residual stream. Throws UsageError for bf16 without --bf16.
bool resolve_bf16_residual(const std::string& residual_dtype, bool bf16);

}  // namespace zerolora
