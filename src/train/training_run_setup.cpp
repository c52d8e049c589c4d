// TrainingRun::Impl's setup, common to both precisions: the settings and output directory
// checked, the tokenizer and data, the LoRA layout, the sampler and schedule, the memory check,
// and the run's signature (training_run_impl.hpp).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <type_traits>

#include "comm/launch.hpp"
#include "core/error.hpp"
#include "data/tokenizer.hpp"
#include "model/backend.hpp"
#include "ops/matmul.hpp"
#include "train/memory_estimate.hpp"
#include "train/run_outputs.hpp"
#include "train/training_run_impl.hpp"
#include "zero3/run_device.hpp"

namespace zerolora {
namespace run_internal {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string fixed(double value, int decimals) {
  char text[64];
  std::snprintf(text, sizeof(text), "%.*f", decimals, value);
  return text;
}

}  // namespace run_internal

using run_internal::fixed;

namespace {

// The data note's word on a chat template's date: the date it wrote and whence, or that
// --chat_date had nothing to date.
std::string chat_date_note(const DataReport& report, const std::string& asked) {
  if (!report.chat_date.empty())
    return " dated " + report.chat_date +
           (asked.empty() ? " (today's; --chat_date fixes it)" : " (--chat_date)");
  return asked.empty() ? "" : " (--chat_date " + asked + " unused: it writes no date here)";
}

}  // namespace

TrainingRun::Impl::Impl(Communicator& communicator, PreparedSettings prepared,
                        RunObserver* observer)
    : comm(communicator),
      settings(std::move(prepared.settings)),
      args(settings.args),
      leader(comm.rank() == 0),
      resuming(!settings.resume_from_checkpoint.empty()),
      ds_scheduler(prepared.ds_scheduler) {
  for (const auto& line : prepared.notes) note(observer, line);
  bf16_residual = resolve_bf16_residual(args.residual_dtype, args.bf16);
  RunDevice run_device =
      open_run_device(settings.device, parse_ddp_backend(settings.ddp_backend), comm);
  ddp_backend = run_device.backend;
  gpu_room = run_device.room;
  if (!run_device.note.empty()) note(observer, run_device.note);
  rt.emplace(settings.threads > 0 ? settings.threads : default_threads_per_rank(),
             std::move(run_device.device));
  // bf16 GEMMs on the CPU need oneDNN's AVX-512 kernels; a GPU has its own.
  if (args.bf16 && rt->device().kind() == DeviceKind::kCpu) require_bf16_matmul(*rt);
  prepare_output_dir_on_all_ranks(comm, settings.output_dir, settings.overwrite_output_dir,
                                  resuming);
  checkpoint.emplace(settings.model_dir);
  const Tokenizer tokenizer =
      open_model_tokenizer(settings.model_dir, checkpoint->config(), settings.data.tokenizer);

  // Data: every rank builds the same dataset (it is small next to the model).
  use_special_tokens(settings.data.tokenize, tokenizer, &checkpoint->config());
  data = build_training_data(*rt, settings.data, tokenizer);
  const DataReport& dr = data.report;
  note(observer, "data: " + std::to_string(dr.records_read) + " records (" +
                     std::to_string(dr.skipped_empty_output) + " skipped: empty output), " +
                     std::to_string(dr.train_examples) + " train / " +
                     std::to_string(dr.validation_examples) + " validation examples, " +
                     std::to_string(dr.truncated) + " truncated at " +
                     std::to_string(settings.data.tokenize.max_seq_length) + " tokens (" +
                     std::to_string(dr.without_targets) +
                     " of them dropped: no response token left); " +
                     std::to_string(data.train.size()) + " training sequences, " +
                     std::to_string(dr.train_tokens) + " tokens (" +
                     std::to_string(dr.train_label_tokens) + " with labels)");
  note(observer,
       "tokenizer: " + tokenizer.path().string() + " (" + tokenizer.format() + ")" +
           (dr.chat_template.empty()
                ? std::string()
                : "; conversations rendered with the " + dr.chat_template + " chat template" +
                      chat_date_note(dr, settings.data.chat_date) + ", " +
                      (settings.data.tokenize.train_on_inputs ? "every token trained"
                                                              : "loss on assistant turns") +
                      ", " + std::to_string(dr.truncated_turns) +
                      " assistant turns cut by max_seq_length (left unlabelled)"));

  lora.rank = args.lora_rank;
  lora.alpha = args.lora_alpha;
  lora.dropout = args.lora_dropout;
  for (const auto& t : args.lora_target_modules) targets += (targets.empty() ? "" : ",") + t;
  lora.targets = parse_lora_targets(targets);
  lora.use_rslora = args.use_rslora;
  lora.init = settings.lora_init;
  layout.emplace(checkpoint->config(), lora);

  std::vector<Index> lengths;
  for (const auto& s : data.train) lengths.push_back(s.size());
  SamplerOptions sampling;
  sampling.global_batch =
      args.per_device_train_batch_size * args.gradient_accumulation_steps * comm.size();
  sampling.world = comm.size();
  sampling.rank = comm.rank();
  sampling.seed = args.seed;
  sampling.group_by_length = args.group_by_length;
  sampling.drop_last = args.dataloader_drop_last;
  sampler.emplace(lengths, sampling);
  per_epoch = sampler->steps_per_epoch();
  if (sampler->partial_epoch_batch())
    note(observer, "note: the training set has " + std::to_string(data.train.size()) +
                       " sequences, fewer than one global batch of " +
                       std::to_string(sampling.global_batch) + ": each epoch is one batch of " +
                       std::to_string(sampler->batch_size()) +
                       " sequences (as Hugging Face's Trainer does" +
                       (sampler->batch_size() > static_cast<Index>(data.train.size())
                            ? ", the first ones repeated to give every rank as many"
                            : "") +
                       ")");
  if (per_epoch < 1)
    throw ConfigError("the training set has " + std::to_string(data.train.size()) +
                      " sequences, fewer than one global batch of " +
                      std::to_string(sampling.global_batch) + " with --dataloader_drop_last");
  total_steps =
      args.max_steps > 0
          ? args.max_steps
          : std::max<std::int64_t>(
                1, static_cast<std::int64_t>(std::ceil(args.num_train_epochs * per_epoch)));
  schedule = make_lr_schedule(args, ds_scheduler, total_steps);
  eval = make_eval_set(data.validation, comm.rank(), comm.size());
  global_batch = sampling.global_batch;
  largest_micro_batch_rows =
      std::min<Index>(args.per_device_train_batch_size, sampler->per_rank()) *
      *std::max_element(lengths.begin(), lengths.end());
  recompute_budget_bytes = resolve_recompute_budget(lengths);
  if (settings.check_memory) check_memory(lengths);
}

Recompute TrainingRun::Impl::recompute_mode() const {
  return args.gradient_checkpointing
             ? parse_recompute(args.recompute_granularity, "--recompute_granularity")
             : Recompute::kNone;
}

double TrainingRun::Impl::resolve_recompute_budget(const std::vector<Index>& lengths) const {
  std::optional<double> free_per_rank;
  if (gpu_room) free_per_rank = gpu_room->free_bytes / std::max(1, gpu_room->ranks_sharing);
  return run_recompute_budget_bytes(checkpoint->config(), *layout, memory_scenario(lengths),
                                    args.recompute_budget_mib, free_per_rank);
}

// "recompute: auto, 10.0 MiB for 5120-token micro-batches: 5 attention (8.6 MiB kept)".
std::string TrainingRun::Impl::recompute_note() const {
  const LlamaConfig& c = checkpoint->config();
  const Recompute mode = recompute_mode();
  if (mode != Recompute::kAuto) return std::string("recompute: ") + recompute_name(mode);
  const RecomputePlan plan =
      make_recompute_plan(mode, c, static_cast<double>(largest_micro_batch_rows),
                          LoraZShape::of(&lora), sizeof(float), recompute_budget_bytes);
  // On a GPU by default: what its free memory holds beyond full recompute, if anything.
  std::string source;
  if (gpu_room && args.recompute_budget_mib < 0)
    source = plan.budget_bytes > 0
                 ? " (what the GPU's free memory holds beyond full recompute, less " +
                       fixed(kGpuRecomputeMargin * 100, 0) + "%, at least " +
                       fixed(kGpuRecomputeMarginFloorBytes / 1073741824.0, 0) + " GiB)"
                 : " (the GPU's free memory holds nothing beyond full recompute and the margin)";
  return "recompute: auto, " + fixed(plan.budget_bytes / 1048576.0, 1) + " MiB" + source + " for " +
         std::to_string(largest_micro_batch_rows) +
         "-token micro-batches: " + describe_recompute_plan(plan.levels) + " (" +
         fixed(plan.kept_bytes / 1048576.0, 1) + " MiB kept)";
}

// Before the model is read: refuse, with the arithmetic, a run the machine (on a GPU: the host
// and the GPU) cannot hold.
MemoryScenario TrainingRun::Impl::memory_scenario(const std::vector<Index>& lengths) const {
  MemoryScenario s;
  s.world_size = comm.size();
  s.zero_stage = args.zero_stage;
  s.prefetch_depth = args.prefetch_depth;
  s.micro_batch = std::min<Index>(args.per_device_train_batch_size, sampler->per_rank());
  s.seq_len = *std::max_element(lengths.begin(), lengths.end());
  s.bf16 = args.bf16;
  s.recompute = recompute_mode();
  s.recompute_budget_bytes = recompute_budget_bytes;
  s.bf16_residual = bf16_residual;
  s.threads = rt->threads();
  s.persistence_threshold = args.persistence_threshold;
  s.dataset_tokens = data.report.train_tokens;
  s.gpu = settings.device != "cpu";
  s.staged = s.gpu && ddp_backend == DdpBackend::kMpi;
  if ((args.eval_strategy != "no" || settings.do_eval) && !eval.mine.empty()) {
    s.eval_micro_batch =
        std::min<Index>(args.per_device_eval_batch_size, static_cast<Index>(eval.mine.size()));
    for (const auto& sequence : data.validation)
      s.eval_seq_len = std::max<std::int64_t>(s.eval_seq_len, sequence.size());
  }
  return s;
}

void TrainingRun::Impl::check_memory(const std::vector<Index>& lengths) const {
  const MemoryScenario s = memory_scenario(lengths);
  const MemoryEstimate estimate = estimate_memory(checkpoint->config(), *layout, s);
  require_memory_fits(estimate, s, std::max(1, detect_launch().local_size));
  if (gpu_room)
    require_device_memory_fits(estimate, s, gpu_room->device_name, gpu_room->free_bytes,
                               gpu_room->ranks_sharing);
}

// The settings that make this run the run it is (run_signature.hpp); `precision` is the
// policy's name.
RunSignature TrainingRun::Impl::signature(std::string_view precision) const {
  const LlamaConfig& c = checkpoint->config();
  const auto number = [](double v) { return std::to_string(v); };
  RunSignature s;
  s.keep("model",
         std::to_string(c.num_layers) + "x" + std::to_string(c.hidden_size) + "/" +
             std::to_string(c.vocab_size),
         "--model_name_or_path");
  s.keep("lora",
         std::to_string(lora.rank) + "/" + number(lora.alpha) + "/" + number(lora.dropout) + "/" +
             targets + (lora.use_rslora ? "/rslora" : ""),
         "--lora_rank, --lora_alpha, --lora_dropout, --lora_target_modules, --use_rslora");
  s.keep("global_batch", std::to_string(global_batch),
         "--per_device_train_batch_size x --gradient_accumulation_steps x ranks, or --deepspeed's "
         "batch sizes");
  s.keep("seed", std::to_string(args.seed), "--seed", /*as_given=*/true);
  s.keep("data",
         std::to_string(data.train.size()) + " sequences, " +
             std::to_string(data.report.train_tokens) + " tokens",
         "--train_file, --validation_file, --validation_split_percentage, --data_format, "
         "--template, the --*_column_name flags, --chat_template, --max_seq_length, --packing or "
         "--dataset_concatenation, --train_on_inputs, --tokenizer");
  // (an fp32 residual adds nothing: checkpoints from before the option read "bf16")
  s.keep("precision", std::string(precision) + (bf16_residual ? ", bf16 residual" : ""),
         "--bf16, --residual_dtype, or --deepspeed's bf16");
  s.keep("schedule",
         args.lr_scheduler_type + (ds_scheduler ? " (DeepSpeed)" : "") + ", lr " +
             number(args.learning_rate) + ", warmup " + std::to_string(args.warmup_steps) + "/" +
             number(args.warmup_ratio),
         "--lr_scheduler_type, --learning_rate, --warmup_steps, --warmup_ratio, or --deepspeed's "
         "optimizer lr and scheduler");
  // Added after checkpoints existed: those without them resume without their comparison.
  s.keep("train_on_inputs", settings.data.tokenize.train_on_inputs ? "true" : "false",
         "--train_on_inputs (true for --data_format text)");
  // The DeepSpeed scheduler's type and explicit parameters (those not given are "auto": the
  // HF flags kept above, or DeepSpeed's defaults; total_num_steps, the schedule's length like
  // --max_steps, may change to continue a run).
  if (ds_scheduler) {
    const auto given = [&](const char* name, const auto& value) {
      if (!value) return std::string(name) + " auto";
      if constexpr (std::is_integral_v<std::decay_t<decltype(*value)>>)
        return std::string(name) + " " + std::to_string(*value);
      else
        return std::string(name) + " " + number(*value);
    };
    const DeepSpeedScheduler& d = *ds_scheduler;
    s.keep("ds_scheduler",
           std::string(LrSchedule::kind_name(d.kind)) + ", " +
               given("warmup_min_lr", d.warmup_min_lr) + ", " +
               given("warmup_max_lr", d.warmup_max_lr) + ", " +
               given("warmup_num_steps", d.warmup_num_steps) + ", " +
               given("warmup_min_ratio", d.warmup_min_ratio) + ", " +
               given("cos_min_ratio", d.cos_min_ratio) + ", warmup " +
               (d.log_warmup ? "log" : "linear"),
           "the --deepspeed file's scheduler type and params");
  }
  s.keep("optimizer",
         "AdamW " + number(args.adam_beta1) + "/" + number(args.adam_beta2) + "/" +
             number(args.adam_epsilon) + ", weight decay " + number(args.weight_decay) + ", clip " +
             number(args.max_grad_norm),
         "--adam_beta1, --adam_beta2, --adam_epsilon, --weight_decay, --max_grad_norm, or "
         "--deepspeed's optimizer and gradient_clipping");
  s.keep("data_order",
         std::string(args.group_by_length ? "grouped by length" : "shuffled") +
             (args.dataloader_drop_last ? ", last batch dropped" : ""),
         "--group_by_length, --dataloader_drop_last");
  s.keep("zero_stage", std::to_string(args.zero_stage),
         "--deepspeed, its zero_optimization.stage (3 without --deepspeed)");
  // Chat data: the template, and where it wrote one the date, which changes with the day (a
  // resume renders the data as the checkpoint's run did).
  if (!data.report.chat_template.empty())
    s.keep("chat_template", data.report.chat_template, "--chat_template", /*as_given=*/true);
  if (!data.report.chat_date.empty())
    s.keep("chat_date", data.report.chat_date, "--chat_date", /*as_given=*/true);
  s.split = {{"world_size", std::to_string(comm.size())},
             {"micro_batch", std::to_string(args.per_device_train_batch_size)},
             {"accumulation", std::to_string(args.gradient_accumulation_steps)},
             {"persistence_threshold", std::to_string(args.persistence_threshold)},
             {"recompute", args.gradient_checkpointing ? args.recompute_granularity : "none"}};
  return s;
}

// Evaluations on the arguments' schedule after `done` steps (HF's eval_delay included).
bool TrainingRun::Impl::evaluates_after(std::int64_t done) const {
  const std::int64_t every = args.eval_steps > 0 ? args.eval_steps : args.logging_steps;
  if (args.eval_strategy == "steps")
    return done % every == 0 && args.eval_delay <= static_cast<double>(done);
  if (args.eval_strategy == "epoch")
    return done % per_epoch == 0 &&
           args.eval_delay <= static_cast<double>(done) / static_cast<double>(per_epoch);
  return false;
}

}  // namespace zerolora
