// TrainingRun's internals, shared by its two source files: training_run_setup.cpp (what does
// not depend on the precision: settings, data, LoRA layout, schedule, memory check, signature)
// and training_run.cpp (the precision's model, trainer and step loop, as PolicyRun<P>).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "comm/device_comm.hpp"
#include "core/runtime.hpp"
#include "data/dataset.hpp"
#include "data/sampler.hpp"
#include "io/checkpoint.hpp"
#include "lora/lora_layout.hpp"
#include "model/recompute_plan.hpp"
#include "train/lr_schedule.hpp"
#include "train/memory_estimate.hpp"
#include "train/run_setup.hpp"
#include "train/run_signature.hpp"
#include "train/training_args.hpp"
#include "train/training_run.hpp"
#include "zero3/run_device.hpp"

namespace zerolora {
namespace run_internal {
double now_seconds();                           // steady clock, seconds
std::string fixed(double value, int decimals);  // "%.*f"
}  // namespace run_internal

// What does not depend on the precision: the files read, the data built, the schedule and the
// signature. PolicyRun<P> (training_run.cpp) adds the model, the trainer and the step loop.
struct TrainingRun::Impl {
  Impl(Communicator& communicator, PreparedSettings prepared, RunObserver* observer);
  virtual ~Impl() = default;

  virtual RunOutcome run(const StopRequest& stop, RunObserver* observer) = 0;
  virtual nlohmann::ordered_json save(RunObserver* observer) = 0;

  Recompute recompute_mode() const;  // none without gradient checkpointing
  // "recompute: auto, 10.0 MiB for 5120-token micro-batches: 5 attention (8.6 MiB kept)".
  std::string recompute_note() const;
  // The run as estimate_memory sees it, its micro-batches at most `lengths`' longest.
  MemoryScenario memory_scenario(const std::vector<Index>& lengths) const;
  // Recompute auto's budget: --recompute_budget_mib; by default on a GPU what its free memory
  // holds beyond the run at full recompute (gpu_recompute_budget_bytes), else negative (the
  // host default, default_recompute_budget_bytes).
  double resolve_recompute_budget(const std::vector<Index>& lengths) const;
  // Before the model is read: refuse, with the arithmetic, a run the machine cannot hold.
  void check_memory(const std::vector<Index>& lengths) const;
  // The settings that make this run the run it is (run_signature.hpp); `precision` is the
  // policy's name.
  RunSignature signature(std::string_view precision) const;
  // Evaluations on the arguments' schedule after `done` steps (HF's eval_delay included).
  bool evaluates_after(std::int64_t done) const;
  // A line for the run's log: the observer hears it on rank 0 (no observer: nothing).
  void note(RunObserver* observer, const std::string& line) const {
    if (leader && observer) observer->note(line);
  }

  Communicator& comm;
  RunSettings settings;
  TrainingArguments& args;
  const bool leader;
  const bool resuming;
  std::optional<DeepSpeedScheduler> ds_scheduler;
  bool bf16_residual = false;
  std::optional<Runtime> rt;
  DdpBackend ddp_backend = DdpBackend::kMpi;  // for ZeRO-3's gathers on a GPU (run_device.hpp)
  std::optional<DeviceRoom> gpu_room;         // on a GPU, for the memory check (run_device.hpp)
  std::optional<Checkpoint> checkpoint;
  TrainingData data;
  LoraConfig lora;
  std::string targets;  // "q_proj,v_proj,..."
  std::optional<LoraLayout> layout;
  std::optional<DistributedSampler> sampler;
  Index per_epoch = 1;
  Index global_batch = 1;
  Index largest_micro_batch_rows = 0;  // tokens of the largest micro-batch a rank runs
  double recompute_budget_bytes = -1;  // auto's (resolve_recompute_budget; negative: the default)
  std::int64_t total_steps = 1;
  std::int64_t first_step = 0;
  LrSchedule schedule;
  EvalSet eval;
};

}  // namespace zerolora
