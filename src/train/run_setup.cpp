#include "train/run_setup.hpp"

#include <algorithm>
#include <filesystem>
#include <thread>

#include "comm/launch.hpp"
#include "core/error.hpp"
#include "io/json_file.hpp"
#include "model/parameter_table.hpp"
#include "train/lora_trainer.hpp"

namespace zerolora {

namespace fs = std::filesystem;

EvalSet make_eval_set(const std::vector<TokenSequence>& validation, int rank, int world) {
  EvalSet set;
  if (validation.empty()) return set;
  set.sequences = validation;
  TokenSequence padding = validation[0];
  std::fill(padding.labels.begin(), padding.labels.end(), kIgnoreIndex);
  set.sequences.push_back(padding);
  const Index n = static_cast<Index>(validation.size());
  const Index per_rank = (n + world - 1) / world;
  for (Index i = 0; i < per_rank; ++i) {
    const Index global = rank * per_rank + i;
    set.mine.push_back(global < n ? global : n);  // n = the padding sequence
  }
  std::vector<Index> all(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i) all[static_cast<std::size_t>(i)] = i;
  set.targets = count_targets(validation, all);
  return set;
}

int default_threads_per_rank() {
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores / std::max(1, detect_launch().local_size));
}

PreparedSettings prepare_settings(Communicator& comm, RunSettings settings) {
  PreparedSettings prepared;
  if (!settings.resume_from_checkpoint.empty() && settings.overwrite_output_dir)
    throw UsageError(
        "--resume_from_checkpoint continues a run and --overwrite_output_dir discards it: give "
        "one");
  if (!fs::is_directory(settings.model_dir))
    throw IoError(settings.model_dir.string() + ": --model_name_or_path is not a directory");
  if (!settings.deepspeed_config.empty()) {
    const LlamaConfig config = LlamaConfig::load(settings.model_dir / "config.json");
    const std::string label = settings.deepspeed_config.string();
    const DeepSpeedResult ds =
        apply_deepspeed_config(read_json_file(settings.deepspeed_config), settings.args,
                               comm.size(), config.hidden_size, LayerLayout(config).size(), label);
    prepared.ds_scheduler = ds.scheduler;
    if (!ds.ignored_keys.empty()) {
      std::string keys;
      for (const auto& k : ds.ignored_keys) keys += (keys.empty() ? "" : ", ") + k;
      prepared.notes.push_back("warning: " + label +
                               ": these keys mean nothing to zerolora and are ignored: " + keys);
    }
    for (const auto& n : ds.notes) prepared.notes.push_back("note: " + label + ": " + n);
  }
  check_training_arguments(settings.args);
  prepared.settings = std::move(settings);
  return prepared;
}

}  // namespace zerolora
