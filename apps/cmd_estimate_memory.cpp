// `zerolora estimate-memory`: predicted memory per rank of a training run, item by item.
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apps/cli.hpp"
#include "apps/commands.hpp"
#include "apps/flag_checks.hpp"
#include "core/error.hpp"
#include "train/memory_estimate.hpp"
#include "train/training_args.hpp"

namespace zerolora::cli {
namespace {

struct EstimateOptions {
  std::string model, preset;
  std::vector<std::string> targets{"q_proj", "k_proj", "v_proj", "o_proj"};
  int lora_rank = 4;
  double lora_dropout = LoraConfig{}.dropout;
  MemoryScenario scenario;
  std::string bf16 = "true", recompute = "true", residual_dtype = "auto", granularity = "auto";
  double recompute_budget_mib = -1;
  std::int64_t eval_batch = TrainingArguments{}.per_device_eval_batch_size;
  double device_gb = 96;
  std::string device = "cpu", ddp_backend = "nccl", eval_strategy = "no";
  bool json = false;
};

struct Estimate {
  LlamaConfig config;
  LoraConfig lora;
  std::string targets;  // comma-separated
  std::int64_t lora_parameters = 0;
  MemoryEstimate memory;
};

Estimate estimate(EstimateOptions& o) {
  if (o.model.empty() == o.preset.empty())
    throw UsageError("give one of --model_name_or_path and --preset");
  const LlamaConfig config = o.preset.empty()
                                 ? LlamaConfig::load(std::filesystem::path(o.model) / "config.json")
                                 : preset_config(o.preset);
  LoraConfig lora;
  lora.rank = o.lora_rank;
  lora.dropout = o.lora_dropout;
  std::string targets;
  for (const auto& t : o.targets) targets += (targets.empty() ? "" : ",") + t;
  lora.targets = parse_lora_targets(targets);
  const LoraLayout layout(config, lora);
  o.scenario.bf16 = o.bf16 == "true";
  o.scenario.recompute = o.recompute == "true"
                             ? parse_recompute(o.granularity, "--recompute_granularity")
                             : Recompute::kNone;
  o.scenario.bf16_residual = resolve_bf16_residual(o.residual_dtype, o.scenario.bf16);
  if (o.device != "cpu" && o.device != "cuda" && o.device.rfind("cuda:", 0) != 0)
    throw UsageError("--device " + o.device + ": expected cpu, cuda or cuda:N");
  o.scenario.gpu = o.device != "cpu";
  o.scenario.staged = o.scenario.gpu && o.ddp_backend == "mpi";
  o.scenario.eval_micro_batch = o.eval_strategy != "no" ? o.eval_batch : 0;
  // As `zerolora train`: on a GPU auto's default budget fills the device's memory.
  o.scenario.recompute_budget_bytes = run_recompute_budget_bytes(
      config, layout, o.scenario, o.recompute_budget_mib,
      o.scenario.gpu ? std::optional<double>(o.device_gb * 1e9) : std::nullopt);
  return {config, lora, targets, static_cast<std::int64_t>(layout.size()),
          estimate_memory(config, layout, o.scenario)};
}

// total_bytes: the memory the model runs in (the GPU's with --device cuda); host_bytes: what a
// GPU run keeps on the host; recompute: every layer's level, and auto's budget; each item says
// where it lives.
nlohmann::ordered_json json_report(const MemoryEstimate& e, bool gpu) {
  nlohmann::ordered_json j{{"device", gpu ? "cuda" : "cpu"},
                           {"total_bytes", e.total()},
                           {"host_bytes", gpu ? e.host_total() : e.total()},
                           {"recompute",
                            {{"plan", describe_recompute_plan(e.recompute.levels)},
                             {"budget_bytes", e.recompute.budget_bytes},
                             {"kept_bytes", e.recompute.kept_bytes}}},
                           {"items", nlohmann::ordered_json::array()}};
  for (const auto& i : e.items)
    j["items"].push_back(
        {{"name", i.name}, {"bytes", i.bytes}, {"memory", gpu && !i.host ? "gpu" : "host"}});
  return j;
}

int run_estimate(EstimateOptions& o) {
  const auto [config, lora, targets, lora_parameters, e] = estimate(o);
  const MemoryScenario& s = o.scenario;
  if (o.json) {
    std::printf("%s\n", json_report(e, s.gpu).dump(2).c_str());
    return 0;
  }
  std::string recompute = s.recompute == Recompute::kNone ? "off" : recompute_name(s.recompute);
  if (s.recompute == Recompute::kAuto)
    recompute += " (a budget of " +
                 std::to_string(std::lround(e.recompute.budget_bytes / 1048576.0)) + " MiB)";
  std::printf(
      "%s: %lld layers, hidden %lld; W = %d ranks, ZeRO stage %d, micro-batch %lld x %lld tokens, "
      "%s (%s residual), recompute %s, LoRA r %d on %s (%lld parameters)\n\n",
      o.preset.empty() ? o.model.c_str() : o.preset.c_str(),
      static_cast<long long>(config.num_layers), static_cast<long long>(config.hidden_size),
      s.world_size, s.zero_stage, static_cast<long long>(s.micro_batch),
      static_cast<long long>(s.seq_len), s.bf16 ? "bf16" : "fp32",
      s.bf16_residual ? "bf16" : "fp32", recompute.c_str(), lora.rank, targets.c_str(),
      static_cast<long long>(lora_parameters));
  auto table = [&](bool host, const char* title, double total) {
    std::printf("  %-74s %12s\n", title, "GiB");
    for (const auto& i : e.items)
      if (i.host == host) std::printf("  %-74s %12.3f\n", i.name.c_str(), i.bytes / 1073741824.0);
    std::printf("  %-74s %12.3f   (%.1f GB)\n", "total", total / 1073741824.0, total / 1e9);
  };
  const double total = e.total();
  table(false, s.gpu ? "per rank, GPU memory" : "per rank", total);
  if (s.gpu) {
    std::printf("\n");
    table(true, "per rank, host memory", e.host_total());
    std::printf(
        "\nNot counted on the GPU: the CUDA context and kernel code (a few hundred MiB in "
        "nvidia-smi) and NCCL's buffers. The GPU figures follow the CUDA backend's "
        "allocations: on an H200 they were within 0.3%% of the measured peak for a "
        "Llama-2-7B shape at 4 x 2048 tokens and 4 layers of Llama-2-70B's at 10 x 2048 "
        "(BENCHMARKS.md).\n");
    if (s.recompute == Recompute::kAuto && o.recompute_budget_mib < 0)
      std::printf(
          "Recompute auto's budget, as `zerolora train` sets it on a GPU: what %.0f GB free "
          "(--device_memory_gb) hold beyond full recompute, less 10%% and at least 2 GiB (none "
          "where they hold nothing more).\n",
          o.device_gb);
  }
  std::printf("\n%s a %.0f GB device (%.0f%% used)\n",
              total <= o.device_gb * 1e9 ? "fits" : "does NOT fit", o.device_gb,
              100.0 * total / (o.device_gb * 1e9));
  return 0;
}

void add_estimate_flags(CLI::App* cmd, EstimateOptions* o) {
  cmd->add_option("--model_name_or_path,--model", o->model,
                  "A model directory (its config.json is read)");
  cmd->add_option("--preset", o->preset,
                  "Instead of a model: llama2-7b, llama2-13b, llama2-70b, llama3-8b, llama3-70b, "
                  "qwen2.5-7b, qwen2.5-72b or mistral-7b")
      ->check(CLI::IsMember(preset_names()));
  cmd->add_option("--world_size", o->scenario.world_size, "Ranks (mpirun -np)")
      ->capture_default_str()
      ->check(whole_in(1));
  cmd->add_option("--zero_stage", o->scenario.zero_stage, "ZeRO stage (3: base weights sharded)")
      ->capture_default_str()
      ->check(whole_in(0, 3));
  cmd->add_option("--per_device_train_batch_size", o->scenario.micro_batch,
                  "Sequences per micro-batch")
      ->capture_default_str()
      ->check(whole_in(1));
  cmd->add_option("--max_seq_length", o->scenario.seq_len, "Tokens per sequence")
      ->capture_default_str()
      ->check(whole_in(1));
  cmd->add_option("--lora_rank", o->lora_rank, "LoRA rank")
      ->capture_default_str()
      ->check(whole_in(1, 4096));
  cmd->add_option("--lora_dropout", o->lora_dropout,
                  "Dropout on the LoRA branch's input (0: no dropped copies kept, as `zerolora "
                  "train`)")
      ->capture_default_str()
      ->check(finite_in(0.0, 0.99));
  cmd->add_option("--lora_target_modules", o->targets, "Adapted projections")
      ->expected(1, -1)
      ->capture_default_str();
  cmd->add_option("--bf16", o->bf16, "true: bf16 weights and matmuls; false: fp32")
      ->capture_default_str()
      ->check(CLI::IsMember({"true", "false"}));
  cmd->add_option("--residual_dtype", o->residual_dtype,
                  "Layer inputs kept for backward: bf16, fp32, or auto (bf16 with --bf16 true)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "bf16", "fp32"}));
  cmd->add_option("--gradient_checkpointing", o->recompute, "true: recompute layers in backward")
      ->capture_default_str()
      ->check(CLI::IsMember({"true", "false"}));
  cmd->add_option("--recompute_granularity", o->granularity,
                  "With recompute: auto, full, attention, attention_mlp or selective (as "
                  "`zerolora train`)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "full", "attention", "attention_mlp", "selective"}));
  cmd->add_option("--recompute_budget_mib", o->recompute_budget_mib,
                  "auto's budget (as `zerolora train`; -1: 8 bytes per logit of a micro-batch, at "
                  "least 32 MiB; with --device cuda the larger of that and what "
                  "--device_memory_gb holds beyond full recompute, less 10% and at least 2 GiB, "
                  "as `zerolora train` with one rank on a GPU of that much free memory)")
      ->capture_default_str()
      ->check(finite_in(-1.0, 1e12));
  cmd->add_option("--eval_strategy", o->eval_strategy,
                  "no, steps or epoch (as `zerolora train`): evaluation's forward holds one "
                  "layer's activations, and grows the buffers it uses (not the backward's) to "
                  "its batch's tokens")
      ->capture_default_str()
      ->check(CLI::IsMember({"no", "steps", "epoch"}));
  cmd->add_option("--per_device_eval_batch_size", o->eval_batch,
                  "Sequences per evaluation batch (with --eval_strategy steps or epoch)")
      ->capture_default_str()
      ->check(whole_in(1));
  cmd->add_option("--prefetch_depth", o->scenario.prefetch_depth, "ZeRO-3 units gathered ahead")
      ->capture_default_str()
      ->check(whole_in(0));
  cmd->add_option("--threads", o->scenario.threads, "Compute threads per rank")
      ->capture_default_str()
      ->check(whole_in(1, 4096));
  cmd->add_option("--stage3_param_persistence_threshold", o->scenario.persistence_threshold,
                  "LoRA tensors at least this large are partitioned")
      ->capture_default_str()
      ->check(whole_in(0));
  cmd->add_option("--dataset_tokens", o->scenario.dataset_tokens,
                  "Tokens of the tokenized training set (held by every rank)")
      ->capture_default_str()
      ->check(whole_in(0));
  cmd->add_option("--device_memory_gb", o->device_gb,
                  "Device capacity to compare with, in GB; with --device cuda also the free GPU "
                  "memory that recompute auto's default budget fills")
      ->capture_default_str()
      ->check(finite_in(0.0));
  cmd->add_option("--device", o->device,
                  "Where the model runs: cpu, or cuda (a GPU: weights and activations in its "
                  "memory, LoRA state and AdamW on the host; each item says where)")
      ->capture_default_str();
  cmd->add_option("--ddp_backend", o->ddp_backend,
                  "With --device cuda and ZeRO-3: nccl, or mpi (the gathers staged through host "
                  "memory: counted on the host)")
      ->capture_default_str()
      ->check(CLI::IsMember({"nccl", "mpi"}));
  cmd->add_flag("--json", o->json, "Machine-readable output");
}

}  // namespace

Command add_estimate_memory(CLI::App& app) {
  auto* cmd = app.add_subcommand("estimate-memory",
                                 "Predict memory per rank of a training run, item by item");
  auto o = std::make_shared<EstimateOptions>();
  add_estimate_flags(cmd, o.get());
  return [o] { return run_estimate(*o); };
}

nlohmann::ordered_json estimate_memory_report(const std::vector<std::string>& args) {
  CLI::App cmd("estimate-memory");
  EstimateOptions o;
  add_estimate_flags(&cmd, &o);
  parse_function_flags(cmd, args);
  return json_report(estimate(o).memory, o.scenario.gpu);
}

}  // namespace zerolora::cli
