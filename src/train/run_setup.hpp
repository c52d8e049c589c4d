// The parts of a training run's set-up that need no model: the settings checked and completed
// (the DeepSpeed config merged in) before anything is read or written, the threads per rank,
// and the validation set spread over the ranks. Internal to TrainingRun (training_run.cpp).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "data/dataset.hpp"
#include "train/training_args.hpp"
#include "train/training_run.hpp"

namespace zerolora {

// Validation sequences spread over the ranks, every rank with the same count (padding:
// copies of sequence 0 with no labels, which add no loss but keep the passes in step).
struct EvalSet {
  std::vector<TokenSequence> sequences;
  std::vector<Index> mine;
  Index targets = 0;
};

EvalSet make_eval_set(const std::vector<TokenSequence>& validation, int rank, int world);

// Threads per rank when the user gave none: this machine's cores divided among the ranks that
// the launcher put on it.
int default_threads_per_rank();

// The settings checked and completed before anything is read or written: the DeepSpeed config
// merged into the arguments (it may choose the precision, so this comes first).
struct PreparedSettings {
  RunSettings settings;
  std::optional<DeepSpeedScheduler> ds_scheduler;
  std::vector<std::string> notes;  // the DeepSpeed config's warnings, for the observer
};

PreparedSettings prepare_settings(Communicator& comm, RunSettings settings);

}  // namespace zerolora
