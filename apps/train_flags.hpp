// `zerolora train` flags, named as HF Trainer / run_lora_clm, registered on a CLI11 command.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "apps/data_flags.hpp"
#include "train/training_args.hpp"
#include "train/training_run.hpp"

namespace zerolora::cli {

struct TrainFlags {
  std::string model_name_or_path, output_dir, deepspeed, resume_from_checkpoint;
  bool overwrite_output_dir = false;
  bool do_train = true, do_eval = false;
  bool disable_tqdm = false;
  bool check_memory = true;
  double peak_tflops = 0;
  int threads = 0;
  std::string device = "cpu";
  std::string ddp_backend = "auto";
  double ddp_timeout = 1800;
  std::string lora_init = "kaiming";
  std::int64_t poison_step = 0;  // testing the non-finite guard (RunSettings::poison_step)
  int poison_layer = 0;
  DataFlags data;
  TrainingArguments args;
  std::vector<std::string> ignored_flags;  // HF flags taken out of the command line (hf_args.hpp)
};

void add_train_flags(CLI::App& cmd, TrainFlags& flags);
// After parsing: records which flags the user gave (DeepSpeed "auto" resolution needs it).
void record_explicit_flags(const CLI::App& cmd, TrainFlags& flags);
// The run the flags describe.
RunSettings run_settings(const TrainFlags& flags);

}  // namespace zerolora::cli
