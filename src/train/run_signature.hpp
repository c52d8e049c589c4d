// What makes a training run the run it is, setting by setting, by name. One definition, two
// checks, each refusing with the differing settings named:
//  - every rank of a run computes the same signature (the same command on the same files);
//  - a checkpoint resumes only into a run whose `kept` settings are the checkpoint's. How the
//    global batch is split over ranks and micro-batches, and which LoRA tensors are partitioned,
//    may change on resume (the optimizer state is resharded when it is read): those are in
//    `split`, compared between ranks only.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "comm/communicator.hpp"

namespace zerolora {

struct RunSignature {
  std::map<std::string, std::string> kept;   // model, LoRA, data, global batch, seed, ...
  std::map<std::string, std::string> split;  // world size, micro-batch, accumulation, ...
  // What sets each kept setting, so that a refused resume says what to change: its flags, and
  // whether its value is their one flag's argument (--seed 42: the refusal says what to pass).
  struct Source {
    std::string flags;
    bool as_given = false;
  };
  std::map<std::string, Source> kept_sources;

  // Records a kept setting with the flags that set it; `as_given` where `value` is the
  // argument of `flags` (one flag).
  void keep(const std::string& name, std::string value, std::string flags, bool as_given = false);
  // The kept settings, as checkpoints record them (trainer_state.json "signature").
  nlohmann::ordered_json to_json() const;
  // One "\n  name: checkpoint X, now Y (set by FLAGS)" line per kept setting that differs from
  // `saved` (a checkpoint's record), or "(pass --flag X)" for one given as is; settings an older
  // checkpoint did not record are not compared.
  std::string resume_differences(const nlohmann::ordered_json& saved) const;
};

// Every rank compares its signature with rank 0's; throws ConfigError on every rank when any
// differs, naming the ranks and (on those ranks) the settings.
void require_same_on_all_ranks(Communicator& comm, const RunSignature& signature);

}  // namespace zerolora
