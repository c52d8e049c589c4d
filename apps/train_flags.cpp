#include "apps/train_flags.hpp"

#include <algorithm>

#include "apps/flag_checks.hpp"
#include "apps/hf_args.hpp"
#include "comm/device_comm.hpp"
#include "core/error.hpp"

namespace zerolora::cli {
namespace {

const char* const kExplicit[] = {"per_device_train_batch_size",
                                 "gradient_accumulation_steps",
                                 "learning_rate",
                                 "weight_decay",
                                 "adam_beta1",
                                 "adam_beta2",
                                 "adam_epsilon",
                                 "max_grad_norm",
                                 "bf16",
                                 "logging_steps"};

}  // namespace

void add_train_flags(CLI::App& cmd, TrainFlags& f) {
  TrainingArguments& a = f.args;
  // As with HF's argparse, a flag given twice takes the last value (scripts append overrides).
  cmd.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd.add_option(
         "--model_name_or_path", f.model_name_or_path,
         "Base model: a local Hugging Face directory (config.json, *.safetensors, tokenizer.json "
         "or tokenizer.model)")
      ->required();
  cmd.add_option("--output_dir", f.output_dir,
                 "Where the PEFT adapter, checkpoints, metrics.jsonl and loss_curve.svg go")
      ->required();
  add_hf_bool(cmd, "overwrite_output_dir", f.overwrite_output_dir,
              "Start over in an output_dir that holds an earlier run (its checkpoints and outputs "
              "are replaced)");
  add_data_flags(cmd, f.data);
  // LoRA
  cmd.add_option("--lora_rank", a.lora_rank, "LoRA rank r")
      ->capture_default_str()
      ->check(whole_in(1, 4096));
  cmd.add_option("--lora_alpha", a.lora_alpha,
                 "LoRA alpha: the update is scaled by alpha / r (alpha / sqrt(r) with rsLoRA)")
      ->capture_default_str()
      ->check(finite_in(0.0));
  cmd.add_option("--lora_dropout", a.lora_dropout, "Dropout on the LoRA branch's input")
      ->capture_default_str()
      ->check(finite_in(0.0, 0.99));
  cmd.add_option("--lora_target_modules", a.lora_target_modules,
                 "Projections to adapt, space- or comma-separated: q_proj k_proj v_proj "
                 "o_proj gate_proj up_proj down_proj, or all-linear")
      ->expected(1, -1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->capture_default_str();
  add_hf_bool(cmd, "use_rslora", a.use_rslora, "Rank-stabilised LoRA: scale alpha / sqrt(r)");
  cmd.add_option("--lora_init", f.lora_init,
                 "LoRA A initialisation: kaiming (PEFT's default) or gaussian")
      ->capture_default_str()
      ->check(CLI::IsMember({"kaiming", "gaussian"}));
  // Length and batches
  cmd.add_option("--num_train_epochs", a.num_train_epochs,
                 "Epochs over the training set (fractions allowed)")
      ->capture_default_str()
      ->check(finite_in(0.0));
  cmd.add_option("--max_steps", a.max_steps,
                 "Optimizer steps; overrides --num_train_epochs when > 0")
      ->capture_default_str()
      ->check(whole_in(-1));
  cmd.add_option("--per_device_train_batch_size,--per_gpu_train_batch_size",
                 a.per_device_train_batch_size,
                 "Sequences per forward/backward on each rank (a micro-batch)")
      ->capture_default_str()
      ->check(whole_in(1));
  cmd.add_option("--per_device_eval_batch_size,--per_gpu_eval_batch_size",
                 a.per_device_eval_batch_size, "Sequences per evaluation batch")
      ->capture_default_str()
      ->check(whole_in(1));
  cmd.add_option("--gradient_accumulation_steps", a.gradient_accumulation_steps,
                 "Micro-batches per optimizer step; global batch = micro-batch x this x ranks")
      ->capture_default_str()
      ->check(whole_in(1));
  // Optimizer and schedule
  cmd.add_option("--learning_rate", a.learning_rate, "Peak learning rate (AdamW)")
      ->capture_default_str()
      ->check(finite_in(0.0));
  cmd.add_option("--weight_decay", a.weight_decay, "AdamW decoupled weight decay")
      ->capture_default_str()
      ->check(finite_in(0.0));
  cmd.add_option("--adam_beta1", a.adam_beta1, "AdamW beta1")
      ->capture_default_str()
      ->check(finite_below(0.0, 1.0));
  cmd.add_option("--adam_beta2", a.adam_beta2, "AdamW beta2")
      ->capture_default_str()
      ->check(finite_below(0.0, 1.0));
  cmd.add_option("--adam_epsilon", a.adam_epsilon, "AdamW epsilon")
      ->capture_default_str()
      ->check(finite_in(0.0));
  cmd.add_option("--max_grad_norm", a.max_grad_norm,
                 "Clip gradients to this global L2 norm (0: no clipping)")
      ->capture_default_str()
      ->check(finite_in(0.0));
  cmd.add_option("--lr_scheduler_type", a.lr_scheduler_type,
                 "linear, cosine, constant or constant_with_warmup")
      ->capture_default_str()
      ->check(CLI::IsMember({"linear", "cosine", "constant", "constant_with_warmup"}));
  cmd.add_option("--warmup_ratio", a.warmup_ratio,
                 "Warmup as a fraction of all steps (when --warmup_steps is 0)")
      ->capture_default_str()
      ->check(finite_in(0.0, 1.0));
  cmd.add_option("--warmup_steps", a.warmup_steps, "Linear warmup steps (from lr 0)")
      ->capture_default_str()
      ->check(whole_in(0));
  // Precision and memory
  add_hf_bool(cmd, "bf16", a.bf16,
              "bf16 weights and matmuls with fp32 accumulation; false: everything fp32");
  add_hf_bool(cmd, "gradient_checkpointing", a.gradient_checkpointing,
              "Recompute each layer in backward from its kept input (--recompute_granularity: what "
              "else each layer keeps)");
  cmd.add_option("--recompute_granularity", a.recompute_granularity,
                 "With gradient checkpointing, what each layer keeps for backward: full (its "
                 "input, and its LoRA z: rank values a row an adapted module), attention (+ its "
                 "attention output: backward skips the attention "
                 "forward), attention_mlp (+ the MLP's gate/up outputs: backward recomputes only "
                 "the attention block's projections), selective (attention + the whole attention "
                 "block: backward recomputes only the MLP's gate/up), or auto (per layer, the "
                 "least recompute that fits --recompute_budget_mib)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "full", "attention", "attention_mlp", "selective"}));
  cmd.add_option(
         "--recompute_budget_mib", a.recompute_budget_mib,
         "With --recompute_granularity auto: MiB of activations kept beyond full "
         "recompute's, spent on every layer's attention output first, then on attention_mlp "
         "(models whose gate/up GEMM is at least twice q/k/v and o's) or selective layers, "
         "then on keeping everything; default (any negative): 8 bytes per logit of a "
         "micro-batch (tokens x vocab x 8), less than the 10-12 that Transformers' loss "
         "holds at its peak and zerolora's chunked loss never does, and at least 32 MiB; "
         "with --device cuda instead what the GPU's free memory holds beyond full "
         "recompute, less 10% of it (at least 2 GiB), or nothing where it holds no more")
      ->capture_default_str()
      ->check(finite_in(-1.0, 1e12));
  cmd.add_option("--residual_dtype", a.residual_dtype,
                 "Precision of the hidden states between decoder layers and of the layer inputs "
                 "kept for backward (the largest activation memory): bf16 (half the memory, as "
                 "a bf16 model in PyTorch), fp32, or auto = bf16 with --bf16 and fp32 without")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "bf16", "fp32"}));
  add_hf_bool(
      cmd, "attn_softmax_bf16", a.attn_softmax_bf16,
      "Round attention scores and probabilities to bf16 (the seed recipe's flag; slower on CPU)");
  // Logging, evaluation, checkpoints
  cmd.add_option("--logging_steps", a.logging_steps, "Log a metrics line every N steps")
      ->capture_default_str()
      ->check(whole_in(1));
  cmd.add_option("--eval_strategy,--evaluation_strategy", a.eval_strategy,
                 "When to evaluate on the validation set: no, steps (every --eval_steps) or epoch")
      ->capture_default_str()
      ->check(CLI::IsMember({"no", "steps", "epoch"}));
  cmd.add_option("--eval_delay", a.eval_delay,
                 "No evaluation before this many epochs (eval_strategy epoch) or steps (steps)")
      ->capture_default_str()
      ->check(finite_in(0.0));
  cmd.add_option("--eval_steps", a.eval_steps,
                 "Evaluate every N steps (eval_strategy steps; default: logging_steps)")
      ->capture_default_str()
      ->check(whole_in(0));
  cmd.add_option("--save_strategy", a.save_strategy,
                 "When to write checkpoints: no, steps (every --save_steps) or epoch; "
                 "steps and epoch also write one at the last step")
      ->capture_default_str()
      ->check(CLI::IsMember({"no", "steps", "epoch"}));
  cmd.add_option("--save_steps", a.save_steps, "Checkpoint every N steps")
      ->capture_default_str()
      ->check(whole_in(1));
  cmd.add_option("--save_total_limit", a.save_total_limit, "Keep at most N checkpoints (0: all)")
      ->capture_default_str()
      ->check(whole_in(0));
  cmd.add_option("--resume_from_checkpoint", f.resume_from_checkpoint,
                 "Continue from a checkpoint directory, or 'last' for the newest in output_dir");
  cmd.add_option("--seed", a.seed, "Seed for LoRA init, data order and dropout")
      ->capture_default_str()
      ->check(whole_in(0));
  cmd.add_option("--throughput_warmup_steps", a.throughput_warmup_steps,
                 "First steps left out of the throughput and runtime summary")
      ->capture_default_str()
      ->check(whole_in(0));
  cmd.add_option("--deepspeed", f.deepspeed,
                 "A DeepSpeed config (ds_config.json): batch sizes, bf16, gradient clipping, "
                 "optimizer, scheduler "
                 "and zero_optimization are read; \"auto\" values come from the flags");
  cmd.add_option("--device", f.device,
                 "Where the model runs: cpu, or cuda / cuda:N (a GPU; builds with ZEROLORA_CUDA)")
      ->capture_default_str();
  cmd.add_option("--ddp_backend", f.ddp_backend,
                 "How ZeRO-3 gathers the shards between GPUs: nccl (one rank per GPU), mpi (GPU "
                 "buffers staged through host memory, for ranks sharing a GPU or clusters without "
                 "NCCL), or auto (nccl when every rank has its own GPU and NCCL loads)")
      ->capture_default_str()
      ->check([](const std::string& value) {
        try {
          parse_ddp_backend(value);
          return std::string();
        } catch (const Error& e) {
          return std::string(e.what());
        }
      });
  cmd.add_option("--ddp_timeout", f.ddp_timeout,
                 "Seconds a GPU collective may take before every rank is ended with a message "
                 "naming it (a lost or stuck rank)")
      ->capture_default_str()
      ->check(finite_in(1));
  cmd.add_option("--threads", f.threads,
                 "Compute threads per rank (0: the cores divided among local ranks)")
      ->capture_default_str()
      ->check(whole_in(0, 4096));
  add_hf_bool(cmd, "group_by_length", a.group_by_length,
              "Order each epoch in shuffled groups of similar-length sequences (HF's sampler)");
  add_hf_bool(cmd, "dataloader_drop_last", a.dataloader_drop_last,
              "Drop an incomplete last global batch of each epoch (false: it wraps around to the "
              "start of the epoch's order)");
  cmd.add_option("--skip_nonfinite_steps", a.skip_nonfinite_steps,
                 "A step whose loss or gradient norm is NaN or Inf makes no update; skip up to N "
                 "of them (counted as skipped_steps in metrics.jsonl) before stopping. 0: stop at "
                 "the first, naming the step and layer; checkpoints and earlier files are kept")
      ->capture_default_str()
      ->check(whole_in(0));
  cmd.add_option("--debug_poison_step", f.poison_step,
                 "Testing: put a NaN into one activation at this step (from 1; 0: never), to see "
                 "the non-finite guard work")
      ->capture_default_str()
      ->check(whole_in(0))
      ->group("Testing");
  cmd.add_option("--debug_poison_layer", f.poison_layer,
                 "Testing: the decoder layer whose output --debug_poison_step poisons")
      ->capture_default_str()
      ->check(whole_in(0))
      ->group("Testing");
  cmd.add_option("--peak_tflops", f.peak_tflops,
                 "The device's dense peak in TFLOP/s, MFU's denominator (e.g. 989 for an H100 or "
                 "H200 in bf16); 0: measure the GEMM rate at the start")
      ->capture_default_str()
      ->check(finite_in(0));
  add_hf_bool(cmd, "check_memory", f.check_memory,
              "Refuse up front a run whose predicted memory (as estimate-memory predicts it, "
              "times the ranks on this machine) exceeds what the machine can still give");
  add_hf_bool(cmd, "do_train", f.do_train, "Train (accepted for HF compatibility)");
  add_hf_bool(cmd, "do_eval", f.do_eval, "Evaluate on the validation set at the end");
  add_hf_bool(
      cmd, "disable_tqdm", f.disable_tqdm,
      "No progress bar: plain log lines every --logging_steps (always so when stdout is not a "
      "terminal "
      "or under mpirun)");
}

void record_explicit_flags(const CLI::App& cmd, TrainFlags& f) {
  for (const char* name : kExplicit)
    if (cmd.count(std::string("--") + name) > 0) f.args.explicitly_set.insert(name);
}

RunSettings run_settings(const TrainFlags& f) {
  RunSettings s;
  s.model_dir = f.model_name_or_path;
  s.output_dir = f.output_dir;
  s.deepspeed_config = f.deepspeed;
  s.resume_from_checkpoint = f.resume_from_checkpoint;
  s.overwrite_output_dir = f.overwrite_output_dir;
  s.do_eval = f.do_eval;
  s.threads = f.threads;
  s.device = f.device;
  s.ddp_backend = f.ddp_backend;
  s.ddp_timeout = f.ddp_timeout;
  s.check_memory = f.check_memory;
  s.peak_tflops = f.peak_tflops;
  s.lora_init = f.lora_init == "gaussian" ? LoraInit::kGaussian : LoraInit::kKaimingUniform;
  s.data = f.data.options();
  s.args = f.args;
  s.poison_step = f.poison_step;
  s.poison_layer = f.poison_layer;
  return s;
}

}  // namespace zerolora::cli
