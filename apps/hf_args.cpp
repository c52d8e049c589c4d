#include "apps/hf_args.hpp"

#include <algorithm>
#include <map>
#include <sstream>

#include "core/error.hpp"

namespace zerolora::cli {
namespace {

// How many values a flag takes, as argparse reads it: a boolean takes one if the next argument
// is not a flag (nargs="?"), a value flag takes the next argument, a list every argument up to
// the next flag (nargs="+").
enum class Arity { kOptionalBool, kValue, kList };

// Flags that mean nothing to zerolora, grouped by arity (names from transformers 4.51/5.x
// TrainingArguments, optimum-habana 1.12-1.20 GaudiTrainingArguments and run_lora_clm.py, the
// DeepSpeed, torchrun and gaudi_spawn launchers).
constexpr const char* kIgnoredBools =
    // optimum-habana: HPU device, graph modes, fused kernels with the same maths
    "use_habana use_lazy_mode use_hpu_graphs use_hpu_graphs_for_inference "
    "use_hpu_graphs_for_training use_compiled_autograd compile_from_sec_iteration "
    "use_zero3_leaf_promotion use_regional_compilation disable_tensor_cache_hpu_graphs "
    "minimize_memory adjust_throughput pipelining_fwd_bwd ignore_eos non_blocking_data_copy "
    "profiling_record_shapes profiling_with_stack use_flash_attention flash_attention_recompute "
    "flash_attention_causal_mask flash_attention_fast_softmax use_fused_rope load_meta_device "
    "sdp_on_bf16 "
    // run_lora_clm: hub and loading, cache, options the script never reads
    "use_fast_tokenizer trust_remote_code use_cache low_cpu_mem_usage overwrite_cache "
    "pad_to_max_length keep_in_memory keep_linebreaks save_last_ckpt "
    // Trainer: logging, hub, devices, DDP, data loader, compilation, evaluation mechanics
    "logging_first_step logging_nan_inf_filter log_on_each_node include_tokens_per_second "
    "include_num_input_tokens_seen skip_memory_metrics push_to_hub hub_always_push "
    "save_safetensors save_on_each_node save_only_model use_cpu no_cuda use_mps_device use_ipex "
    "ddp_find_unused_parameters dataloader_pin_memory dataloader_persistent_workers "
    "torch_compile tpu_metrics_debug remove_unused_columns prediction_loss_only "
    "eval_do_concat_batches batch_eval_metrics eval_use_gather_object use_legacy_prediction_loop "
    "jit_mode_eval bf16_full_eval fp16_full_eval full_determinism use_liger_kernel do_predict "
    "eval_on_start restore_callback_states_from_checkpoint auto_find_batch_size "
    // launchers (flags of gaudi_spawn.py, deepspeed, torchrun appended by mistake)
    "use_mpi use_deepspeed no_local_rank no_ssh no_ssh_check force_multi save_pid "
    "enable_each_rank_log bind_cores_to_rank elastic_training no_python module standalone";
constexpr const char* kIgnoredValues =
    "compile_dynamic cache_size_limit inline_inbuilt_nn_modules allow_unspec_int_on_nn_module "
    "max_hpu_graphs distribution_strategy profiling_warmup_steps profiling_steps "
    "profiling_warmup_steps_eval profiling_steps_eval gaudi_config_name attn_implementation "
    "context_parallel_size half_precision_backend "
    "cache_dir token model_revision dataset_seed dataset_cache_directory "
    "logging_dir logging_strategy log_level log_level_replica run_name hub_model_id hub_strategy "
    "hub_token hub_private_repo hub_revision push_to_hub_model_id push_to_hub_organization "
    "push_to_hub_token ddp_bucket_cap_mb ddp_broadcast_buffers "
    "dataloader_num_workers dataloader_prefetch_factor torch_compile_backend torch_compile_mode "
    "torchdynamo torch_empty_cache_steps tpu_num_cores debug mp_parameters ray_scope "
    "eval_accumulation_steps tf32 gradient_checkpointing_kwargs accelerator_config fsdp "
    "fsdp_config fsdp_min_num_params fsdp_transformer_layer_cls_to_wrap tp_size "
    "metric_for_best_model greater_is_better length_column_name past_index project "
    "adalora_init_r adalora_target_r adalora_tinit adalora_tfinal adalora_delta_t "
    "adalora_orth_reg_weight adapter_layers adapter_len "
    "world_size master_port master_addr hostfile include exclude num_nodes num_gpus "
    "num_accelerators node_rank nproc_per_node nnodes launcher launcher_args ssh_port "
    "bind_core_list venv_script min_elastic_nodes max_elastic_nodes autotuning "
    "rdzv_backend rdzv_endpoint rdzv_id max_restarts";
constexpr const char* kIgnoredLists =
    "report_to label_names include_for_metrics ia3_target_modules feedforward_modules "
    "vera_target_modules ln_target_modules";

// A flag that would change the result: refused unless its value is one of `allowed` (empty:
// refused whatever its value; for a boolean, "false" lists the harmless value).
struct Refused {
  const char* name;
  Arity arity;
  const char* allowed;  // space-separated
  const char* reason;
};

constexpr const char* kLocalData =
    "zerolora reads data from local files, not from the Hugging Face Hub: download the dataset "
    "and pass it with --train_file (a .json array of records, .jsonl with one record per line, "
    "or .txt with --data_format text; Alpaca fields instruction, input, output)";

const Refused kRefused[] = {
    {"fp16", Arity::kOptionalBool, "false",
     "fp16 mixed precision is not supported: zerolora trains in bf16 with fp32 accumulation "
     "(--bf16, the default) or in fp32 (--bf16 false)"},
    {"fp8", Arity::kOptionalBool, "false",
     "FP8 matmuls are not supported: zerolora trains in bf16 with fp32 accumulation (--bf16); "
     "remove --fp8 (a bf16 run rounds differently from an FP8 one)"},
    {"flash_attention_fp8", Arity::kOptionalBool, "false",
     "FP8 attention is not supported: zerolora's attention is exact, in bf16/fp32"},
    {"adafactor", Arity::kOptionalBool, "false", "only AdamW (torch semantics) is implemented"},
    {"sql_prompt", Arity::kOptionalBool, "false",
     "the SQL prompt is not built in: write it as a --template file"},
    {"chat_prompt", Arity::kOptionalBool, "false",
     "run_lora_clm's chat prompt (its Query/Content user turn through the tokenizer's chat "
     "template) is not built in: write the records as conversations ({\"messages\": [...]}) and "
     "train with --data_format chat, which renders them with the tokenizer's chat template"},
    {"load_best_model_at_end", Arity::kOptionalBool, "false",
     "zerolora writes the final adapter; keep checkpoints (--save_strategy) and pick one by its "
     "eval loss in metrics.jsonl"},
    {"ignore_data_skip", Arity::kOptionalBool, "false",
     "a resumed run always continues the data order where it stopped"},
    {"average_tokens_across_devices", Arity::kOptionalBool, "true",
     "zerolora always normalises the loss by the target tokens of the whole global batch (all "
     "ranks and micro-batches), as average_tokens_across_devices True does"},
    {"optim", Arity::kValue, "adamw_torch adamw_torch_fused adamw_hf",
     "only AdamW (torch semantics) is implemented"},
    {"optim_args", Arity::kValue, "", "optimizer arguments are not supported (AdamW only)"},
    {"label_smoothing_factor", Arity::kValue, "0 0.0", "label smoothing is not implemented"},
    {"neftune_noise_alpha", Arity::kValue, "", "NEFTune embedding noise is not implemented"},
    {"peft_type", Arity::kValue, "lora", "only LoRA is implemented"},
    {"lr_scheduler_kwargs", Arity::kValue, "{}",
     "scheduler arguments are not supported: use a DeepSpeed config's scheduler section"},
    {"data_seed", Arity::kValue, "", "the data order follows --seed: set the seed there"},
    {"dataset_name", Arity::kValue, "", kLocalData},
    {"dataset_config_name", Arity::kValue, "", kLocalData},
    {"config_name", Arity::kValue, "",
     "zerolora reads config.json from --model_name_or_path: put the config there"},
    {"max_train_samples", Arity::kValue, "", "not supported: shorten the data file instead"},
    {"max_eval_samples", Arity::kValue, "", "not supported: shorten the validation file instead"},
};

// Launchers add these; they are expected and not worth a warning.
constexpr const char* kSilent = "local_rank";

struct Foreign {
  Arity arity;
  const Refused* refused = nullptr;  // null: ignored
  bool silent = false;
};

std::vector<std::string> words(const char* text) {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

const std::map<std::string, Foreign>& foreign_flags() {
  static const std::map<std::string, Foreign> table = [] {
    std::map<std::string, Foreign> t;
    for (const auto& w : words(kIgnoredBools)) t[w] = {Arity::kOptionalBool};
    for (const auto& w : words(kIgnoredValues)) t[w] = {Arity::kValue};
    for (const auto& w : words(kIgnoredLists)) t[w] = {Arity::kList};
    for (const auto& r : kRefused) t[r.name] = {r.arity, &r};
    t[kSilent] = {Arity::kValue, nullptr, true};
    return t;
  }();
  return table;
}

std::string underscores(std::string name) {
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

bool is_flag(const std::string& arg) {
  return arg.size() > 2 && arg.rfind("--", 0) == 0;
}

struct OwnFlags {
  std::vector<std::string> names;  // long names without "--"
  std::vector<std::string> bools;  // those that take an optional true/false
};

OwnFlags own_flags(const CLI::App& command) {
  OwnFlags own;
  for (const CLI::Option* option : command.get_options()) {
    for (const auto& name : option->get_lnames()) {
      own.names.push_back(name);
      if (option->get_expected_min() == 0 && option->get_expected_max() == 1)
        own.bools.push_back(name);
    }
  }
  return own;
}

// The full name an argument names: itself, or the one flag it is a prefix of.
std::string resolve(const std::string& name, const std::vector<std::string>& candidates) {
  if (std::find(candidates.begin(), candidates.end(), name) != candidates.end()) return name;
  std::vector<std::string> matches;
  for (const auto& c : candidates)
    if (c.rfind(name, 0) == 0) matches.push_back(c);
  if (matches.size() == 1) return matches[0];
  if (matches.empty()) return {};
  std::sort(matches.begin(), matches.end());
  std::string list;
  for (const auto& m : matches) list += (list.empty() ? "--" : ", --") + m;
  throw UsageError("ambiguous option: --" + name + " could match " + list);
}

}  // namespace

std::optional<bool> hf_bool(const std::string& text) {
  std::string v = text;
  std::transform(v.begin(), v.end(), v.begin(), [](unsigned char c) { return std::tolower(c); });
  if (v == "yes" || v == "true" || v == "t" || v == "y" || v == "1") return true;
  if (v == "no" || v == "false" || v == "f" || v == "n" || v == "0") return false;
  return std::nullopt;
}

CLI::Option* add_hf_bool(CLI::App& cmd, const std::string& name, bool& target,
                         const std::string& help) {
  return cmd
      .add_option_function<std::string>(
          "--" + name,
          [&target, name](const std::string& text) {
            const auto value = text.empty() ? std::optional<bool>(true) : hf_bool(text);
            if (!value)
              throw CLI::ValidationError(
                  "--" + name,
                  "expected true or false (yes/no, t/f, y/n, 1/0), got '" + text + "'");
            target = *value;
          },
          help + " (default: " + std::string(target ? "true" : "false") + ")")
      ->expected(0, 1)
      ->default_str("");
}

HfArguments rewrite_hf_arguments(const std::vector<std::string>& args, const CLI::App& command) {
  const OwnFlags own = own_flags(command);
  const auto& foreign = foreign_flags();
  std::vector<std::string> candidates = own.names;
  for (const auto& b : own.bools) candidates.push_back("no_" + b);
  for (const auto& [name, info] : foreign) candidates.push_back(name);

  HfArguments out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") {
      out.args.insert(out.args.end(), args.begin() + static_cast<std::ptrdiff_t>(i), args.end());
      break;
    }
    if (!is_flag(arg)) {
      out.args.push_back(arg);
      continue;
    }
    const auto equals = arg.find('=');
    const std::string written = arg.substr(2, equals == std::string::npos ? equals : equals - 2);
    const std::optional<std::string> attached =
        equals == std::string::npos ? std::nullopt : std::optional(arg.substr(equals + 1));
    const std::string name = resolve(underscores(written), candidates);
    if (name.empty()) {  // unknown: CLI11 says so
      out.args.push_back(arg);
      continue;
    }
    if (std::find(own.names.begin(), own.names.end(), name) != own.names.end()) {
      out.args.push_back("--" + name + (attached ? "=" + *attached : ""));
      continue;
    }
    if (name.rfind("no_", 0) == 0 &&
        std::find(own.bools.begin(), own.bools.end(), name.substr(3)) != own.bools.end()) {
      if (attached) throw UsageError("--" + written + " takes no value");
      out.args.push_back("--" + name.substr(3) + "=false");
      continue;
    }
    // A foreign flag: take it out with its values.
    const Foreign& flag = foreign.at(name);
    std::vector<std::string> values;
    if (attached) {
      values.push_back(*attached);
    } else if (flag.arity == Arity::kValue) {
      if (i + 1 >= args.size()) throw UsageError("--" + written + " expects a value");
      values.push_back(args[++i]);
    } else {
      while (i + 1 < args.size() && !is_flag(args[i + 1])) {
        values.push_back(args[++i]);
        if (flag.arity == Arity::kOptionalBool) break;
      }
    }
    std::string shown = "--" + written;
    for (const auto& v : values) shown += " " + v;
    if (flag.refused) {
      std::string value = values.empty() ? "true" : values[0];
      if (flag.arity == Arity::kOptionalBool) {
        const auto b = hf_bool(value);
        if (!b) throw UsageError(shown + ": expected true or false");
        value = *b ? "true" : "false";
      }
      const auto allowed = words(flag.refused->allowed);
      if (std::find(allowed.begin(), allowed.end(), value) == allowed.end())
        throw UsageError(shown + ": " + flag.refused->reason);
      continue;  // a harmless value (--fp16 False): nothing to do
    }
    if (!flag.silent) out.ignored.push_back(shown);
  }
  return out;
}

}  // namespace zerolora::cli
