// Checkpoints for resuming training: output_dir/checkpoint-<step>/ holds
//   adapter_config.json, adapter_model.safetensors  the LoRA weights (a loadable PEFT adapter)
//   optimizer-rank<r>.safetensors                   each rank's AdamW moments
//   trainer_state.json                              step, world size, and the run's signature
// The scheduler, data order and dropout masks are functions of (seed, step), so the step is
// all the rest needs. Every rank writes into checkpoint-<step>.tmp/, then rank 0 renames it:
// a checkpoint directory is complete or absent. save_total_limit prunes the oldest.
// Resuming refuses, with the differing settings named, a checkpoint from another
// configuration. Another world size (with the same global batch) is fine: every rank reads
// all ranks' optimizer files and takes its share of the moments under the new split.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "comm/communicator.hpp"
#include "lora/lora_layout.hpp"
#include "train/lora_trainer.hpp"
#include "train/run_signature.hpp"

namespace zerolora {

template <class P>
void save_training_checkpoint(Communicator& comm, const std::filesystem::path& output_dir,
                              std::int64_t step, const LoraLayout& layout, LoraTrainer<P>& trainer,
                              const RunSignature& signature, const std::string& base_model,
                              std::int64_t save_total_limit);

// The checkpoint-<N> directories in `output_dir`, as (N, path) by N.
std::vector<std::pair<std::int64_t, std::filesystem::path>> list_checkpoints(
    const std::filesystem::path& output_dir);

struct ResumePoint {
  std::int64_t step = 0;  // the step to continue from
  int world_size = 1;     // the ranks that wrote the checkpoint
};

// Reads dir's trainer_state.json and refuses (ConfigError, the differing settings named) a
// checkpoint of a run with other kept settings; reads nothing else, so that a caller may refuse
// the checkpoint for its step before the weights are read.
ResumePoint read_resume_point(const std::filesystem::path& dir, const RunSignature& signature);
// Restores the weights and optimizer state of the checkpoint that read_resume_point accepted.
template <class P>
void load_training_checkpoint(const std::filesystem::path& dir, const ResumePoint& point,
                              const LlamaConfig& base, const LoraLayout& layout,
                              LoraTrainer<P>& trainer);

}  // namespace zerolora
