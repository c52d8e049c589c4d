// `zerolora merge`: base model + LoRA adapter -> a full Hugging Face checkpoint directory.
#include <cstdio>
#include <memory>
#include <string>

#include "apps/commands.hpp"
#include "apps/flag_checks.hpp"
#include "core/error.hpp"
#include "lora/peft_adapter.hpp"
#include "model/merge.hpp"

namespace zerolora::cli {
namespace {

struct MergeOptions {
  std::string model, adapter, output_dir, dtype = "auto", max_shard_size = "2GB";
  int threads = 0;
};

std::uint64_t parse_size(const std::string& text) {
  std::size_t used = 0;
  double number = 0;
  try {
    number = std::stod(text, &used);
  } catch (...) {
    throw UsageError("--max_shard_size '" + text + "' is not a size like 2GB or 500MB");
  }
  const std::string unit = text.substr(used);
  const double scale = unit == "GB"                  ? 1e9
                       : unit == "MB"                ? 1e6
                       : unit == "KB"                ? 1e3
                       : unit == "GiB"               ? 1073741824.0
                       : unit == "MiB"               ? 1048576.0
                       : unit == "B" || unit.empty() ? 1.0
                                                     : -1.0;
  if (scale < 0 || number <= 0)
    throw UsageError("--max_shard_size '" + text + "' is not a size like 2GB or 500MB");
  return static_cast<std::uint64_t>(number * scale);
}

int run_merge(const MergeOptions& o) {
  const Checkpoint base(o.model);
  PeftAdapter adapter = load_peft_adapter(o.adapter, base.config());
  const LoraLayout layout(base.config(), adapter.config);
  DType dtype;
  if (o.dtype == "auto") {  // the base checkpoint's storage type
    const auto first = base.at("model.embed_tokens.weight");
    dtype = first.info->dtype;
  } else {
    dtype = o.dtype == "fp32" ? DType::kF32 : o.dtype == "fp16" ? DType::kF16 : DType::kBF16;
  }
  Runtime rt(o.threads);
  const MergeReport r = merge_lora_into_checkpoint(rt, base, layout, adapter.params, o.output_dir,
                                                   parse_size(o.max_shard_size), dtype);
  std::printf(
      "merged %lld of %lld tensors (LoRA scale %.4g) into %s: %lld shard(s), %.1f MiB of %s\n",
      static_cast<long long>(r.merged), static_cast<long long>(r.tensors), adapter.config.scale(),
      o.output_dir.c_str(), static_cast<long long>(r.shards),
      static_cast<double>(r.bytes) / 1048576.0, std::string(dtype_name(dtype)).c_str());
  return 0;
}

}  // namespace

Command add_merge(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "merge", "Merge a LoRA adapter into its base model: a full HF checkpoint directory");
  auto o = std::make_shared<MergeOptions>();
  cmd->add_option("--model_name_or_path,--model", o->model, "Base model directory")->required();
  cmd->add_option("--adapter", o->adapter, "PEFT LoRA adapter directory")->required();
  cmd->add_option("--output_dir", o->output_dir,
                  "New model directory to write (must not exist, or be empty)")
      ->required();
  cmd->add_option("--dtype", o->dtype,
                  "Weight type of the merged model: auto (as the base), bf16, fp16 or fp32")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "bf16", "fp16", "fp32"}));
  cmd->add_option("--max_shard_size", o->max_shard_size,
                  "Largest safetensors shard, e.g. 2GB, 500MB")
      ->capture_default_str();
  cmd->add_option("--threads", o->threads, "Threads (0: all cores)")
      ->capture_default_str()
      ->check(whole_in(0, 4096));
  return [o] { return run_merge(*o); };
}

}  // namespace zerolora::cli
