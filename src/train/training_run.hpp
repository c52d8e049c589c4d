// A LoRA fine-tuning run, as `zerolora train` runs it, on one rank or many (ZeRO-3), as a
// library object with named phases:
//
//   TrainingRun run(comm, settings);      // set up: output directory, DeepSpeed config, model
//                                         // (sharded or whole), data, LoRA, trainer, schedule,
//                                         // the run's signature checked on every rank, resume
//   const RunOutcome outcome = run.run(stop, observer);   // train (and evaluate) step by step
//   run.save(observer);                   // finished: the PEFT adapter, train_results.json and
//                                         // the loss curve; stopped: a checkpoint to resume
//
// Every rank makes the same calls. It prints nothing: the observer hears what happens (on rank
// 0 only), and the run writes its files into the output directory: metrics.jsonl (a JSON line
// per log, evaluation and the summary), loss_curve.svg, checkpoint-N/, the adapter,
// train_results.json.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "data/dataset.hpp"
#include "lora/lora_config.hpp"
#include "train/training_args.hpp"

namespace zerolora {

struct RunSettings {
  std::filesystem::path model_dir;         // a Hugging Face model directory
  std::filesystem::path output_dir;        // adapter, checkpoints, metrics
  std::filesystem::path deepspeed_config;  // empty: none
  std::string resume_from_checkpoint;      // empty, a checkpoint directory, or last / latest
  bool overwrite_output_dir = false;       // start over where an earlier run's outputs are
  bool do_eval = false;                    // evaluate at the end even with eval_strategy no
  int threads = 0;                         // per rank; 0: the cores divided among local ranks
  std::string device = "cpu";              // cpu, cuda, cuda:N (model/backend.hpp)
  // How ZeRO-3's gathers run on GPUs: auto, nccl, mpi (staged through the host), and how long
  // a collective may take before the job is ended (comm/device_comm.hpp, Transformers' names).
  std::string ddp_backend = "auto";
  double ddp_timeout = 1800;
  // Refuse a run whose predicted memory (memory_estimate.hpp), times the ranks on this node,
  // exceeds what the machine or its cgroup can still give.
  bool check_memory = true;
  // MFU's denominator in TFLOP/s per rank: the device's dense peak (an H100/H200's 989 in bf16)
  // when given; 0: measured at the start (a GEMM on each rank's device).
  double peak_tflops = 0;
  LoraInit lora_init = LoraInit::kKaimingUniform;
  DataOptions data;  // BOS/EOS ids are taken from the model's config.json
  TrainingArguments args;
  // Fault injection, for the tests of the non-finite guard: at this step (counting from 1; 0:
  // never) rank 0's first micro-batch gets a NaN in the output of decoder layer poison_layer.
  std::int64_t poison_step = 0;
  int poison_layer = 0;
};

// After each optimizer step.
struct StepProgress {
  std::int64_t step = 0;  // steps done (a skipped non-finite step included)
  std::int64_t total_steps = 0;
  double loss = 0;  // this step's
  double learning_rate = 0;
  double tokens_per_second = 0;  // this step's, all ranks
  // False when the step's global batch had no target token (prompt tokens only: responses cut
  // off by max_seq_length, or concatenated blocks of prompts): nothing was computed, and loss
  // and tokens_per_second are NaN.
  bool computed = true;
};

// What a run reports, on rank 0. Every method has an empty default.
class RunObserver {
 public:
  virtual ~RunObserver() = default;
  // A line for people: the data, the model, the plan, a resume, a checkpoint, an evaluation.
  virtual void note(const std::string& line) {}
  virtual void step(const StepProgress& progress) {}
  // Each record written to metrics.jsonl: every logging_steps a training log (step, epoch,
  // loss, lr, grad_norm, tokens_per_second, samples_per_second, mfu, peak_rss_mib), every
  // evaluation (eval_loss, eval_perplexity), and at the end the summary (train_results.json).
  virtual void metrics(const nlohmann::ordered_json& record) {}
};

// Polled once per step; when it returns true on any rank, every rank stops after that step.
using StopRequest = std::function<bool()>;

struct RunOutcome {
  std::int64_t step = 0;  // steps done
  bool stopped = false;   // by the stop request, before the last step
};

class TrainingRun {
 public:
  // Set up. Throws the library's typed errors (UsageError for settings that conflict or an
  // output directory that holds something else, IoError, FormatError, ConfigError, ...);
  // nothing in the output directory is touched before the settings are checked.
  TrainingRun(Communicator& comm, RunSettings settings, RunObserver* observer = nullptr);
  ~TrainingRun();
  TrainingRun(const TrainingRun&) = delete;
  TrainingRun& operator=(const TrainingRun&) = delete;

  std::int64_t total_steps() const;
  std::int64_t first_step() const;             // 0, or the step a resumed run continues from
  const TrainingArguments& arguments() const;  // after the DeepSpeed config was applied

  // Trains from first_step() to the last step, with evaluations and checkpoints on the
  // arguments' schedule, until `stop` asks. Evaluates at the end (eval_strategy or do_eval).
  // A step whose loss or gradient norm is NaN or Inf makes no update; beyond
  // args.skip_nonfinite_steps of them the run throws NumericalError naming the step, the
  // micro-batch and the layer or tensor, with nothing written for it: the checkpoints and the
  // files already in the output directory stay as they were.
  RunOutcome run(const StopRequest& stop = nullptr, RunObserver* observer = nullptr);

  // After run(): the adapter, train_results.json and the loss curve when the run finished, or
  // a checkpoint (unless one was just written) when it was stopped. Returns the summary
  // (train_results.json's content) or, when stopped, the checkpoint's path in "checkpoint".
  nlohmann::ordered_json save(RunObserver* observer = nullptr);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace zerolora
