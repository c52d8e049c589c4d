#include "train/training_run.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <optional>
#include <thread>

#include "comm/launch.hpp"
#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/precision.hpp"
#include "data/sampler.hpp"
#include "io/json_file.hpp"
#include "lora/peft_adapter.hpp"
#include "model/backend.hpp"
#include "model/flops.hpp"
#include "ops/matmul.hpp"
#include "train/lora_trainer.hpp"
#include "train/memory_estimate.hpp"
#include "train/metrics.hpp"
#include "train/run_outputs.hpp"
#include "train/run_setup.hpp"
#include "train/run_signature.hpp"
#include "train/train_checkpoint.hpp"
#include "train/training_run_impl.hpp"
#include "zero3/run_device.hpp"
#include "zero3/sharded_weights.hpp"
#include "zero3/whole_model.hpp"

namespace zerolora {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;
using run_internal::fixed;
using run_internal::now_seconds;

// A figure that does not exist (a loss without target tokens, a rate without compute): NaN,
// which metrics.jsonl writes as null.
constexpr double kNoValue = std::numeric_limits<double>::quiet_NaN();

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

// Throughput over the steps after the warm-up ones, for the summary.
struct Totals {
  double time = 0, tokens = 0, samples = 0, flops = 0;
  std::int64_t steps = 0;
};

}  // namespace

namespace {

template <class P>
class PolicyRun final : public TrainingRun::Impl {
 public:
  using Weight = typename P::Weight;

  PolicyRun(Communicator& communicator, PreparedSettings prepared, RunObserver* observer)
      : Impl(communicator, std::move(prepared), observer) {
    const LlamaConfig& config = checkpoint->config();
    const double load_start = now_seconds();
    // ZeRO-3 shards the base weights; stages 0-2 keep them whole on every rank.
    if (args.zero_stage == 3 && comm.size() > 1) {
      // On a GPU the shards live in its memory, gathered over NCCL or staged through the host.
      parameter_comm_ =
          make_parameter_communicator(rt->device(), ddp_backend, comm, settings.ddp_timeout);
      weights_ = std::make_unique<ShardedWeights<Weight>>(
          ShardedWeights<Weight>::load(*rt, parameter_comm_ ? *parameter_comm_ : comm, *checkpoint,
                                       ZeroOptions{args.prefetch_depth, args.max_live_elements}));
    } else {
      weights_ = load_whole_model<Weight>(*rt, *checkpoint);  // on a GPU, never a host copy
    }
    note(observer, "model: " + settings.model_dir.string() + ", " +
                       std::to_string(config.num_layers) + " layers, hidden " +
                       std::to_string(config.hidden_size) + ", " + std::string(P::kName) +
                       (bf16_residual ? " (bf16 residual)" : "") + ", loaded in " +
                       fixed(now_seconds() - load_start, 2) + " s; " + std::to_string(comm.size()) +
                       " rank(s) x " + std::to_string(rt->threads()) + " thread(s), ZeRO stage " +
                       std::to_string(args.zero_stage) + "; " + recompute_note());
    ComputeOptions compute;
    compute.recompute = recompute_mode();
    compute.recompute_budget_bytes = recompute_budget_bytes;
    compute.attention.softmax_bf16 = args.attn_softmax_bf16;
    compute.bf16_residual = bf16_residual;
    model_.emplace(*rt, *weights_, &*layout, compute);

    signature_ = signature(P::kName);
    require_same_on_all_ranks(comm, signature_);
    std::vector<float> init(static_cast<std::size_t>(layout->size()));
    init_lora_params<float>(init, *layout, args.seed);
    TrainerOptions options;
    options.micro_batch = args.per_device_train_batch_size;
    options.adamw =
        AdamWConfig{args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.weight_decay};
    options.max_grad_norm = args.max_grad_norm;
    options.seed = args.seed;
    // ZeRO stages, for what trains (LoRA) and what does not (the base weights):
    //   0     everything whole on every rank;
    //   1, 2  the base whole on every rank (no weight gathers: the fastest where it fits);
    //         every LoRA tensor's optimizer state (1) and gradients (2) partitioned. Both
    //         stages partition all three of a LoRA's parameters, gradients and moments: the
    //         same results, and the tensors are small enough that the per-layer gather of the
    //         parameters costs nothing worth a second code path;
    //   3     the base weights partitioned as well, LoRA tensors by the persistence threshold.
    options.persistence_threshold = args.zero_stage == 0  ? std::numeric_limits<Index>::max()
                                    : args.zero_stage < 3 ? Index{0}
                                                          : args.persistence_threshold;
    if (comm.size() > 1 && (args.zero_stage == 1 || args.zero_stage == 2))
      note(observer,
           "note: ZeRO stage " + std::to_string(args.zero_stage) +
               ": the base model is whole on every rank; the LoRA tensors' optimizer state and "
               "gradients (and parameters) are partitioned over the " +
               std::to_string(comm.size()) + " ranks");
    if (settings.poison_step > 0 && settings.poison_layer >= config.num_layers)
      throw UsageError("--debug_poison_layer " + std::to_string(settings.poison_layer) +
                       ": the model has decoder layers 0 to " +
                       std::to_string(config.num_layers - 1));
    options.poison_step = settings.poison_step - 1;
    options.poison_layer = settings.poison_layer;
    trainer_.emplace(*rt, comm, *model_, *layout, options, init);
    note(observer,
         "training: " + std::to_string(total_steps) + " steps (" + std::to_string(per_epoch) +
             " per epoch), global batch " + std::to_string(global_batch) + " = " +
             std::to_string(args.per_device_train_batch_size) + " x " +
             std::to_string(args.gradient_accumulation_steps) + " accumulation x " +
             std::to_string(comm.size()) + " rank(s); LoRA r " + std::to_string(lora.rank) +
             " alpha " + fixed(lora.alpha, 3) + " on " + targets + " (" +
             std::to_string(layout->size()) + " parameters); lr " + schedule.describe());

    if (resuming) resume(observer);
    const fs::path log_path = settings.output_dir / "metrics.jsonl";
    if (leader) {
      if (resuming) history_ = keep_metrics_until(log_path, first_step);
      metrics_log_ = std::make_unique<MetricsLog>(log_path, resuming);
    }
  }

  RunOutcome run(const StopRequest& stop, RunObserver* observer) override {
    // MFU's denominator: the GEMM rate of all ranks in the run's precision, measured together
    // as they will run, on the run's device (a GPU at a size that fills it).
    const bool gpu = rt->device().kind() != DeviceKind::kCpu;
    comm.barrier();  // all ranks measure at once (ranks sharing a GPU share its rate)
    peak_gflops_ =
        comm.all_reduce_sum(settings.peak_tflops > 0 ? settings.peak_tflops * 1e3
                                                     : measure_device_gemm_gflops<P>(
                                                           *rt, gpu ? 8192 : 1024, gpu ? 10 : 5));
    // The measurement's operands (800 MiB on a GPU) are not the run's: peak memory from here.
    rt->device().reset_peak();
    // A step whose global batch has no target token computes nothing (LoraTrainer::step): its
    // time and tokens are left out of the rates, and a window of only such steps has none.
    double window_loss = 0, window_time = 0, window_tokens = 0, window_samples = 0,
           window_flops = 0;
    std::int64_t window_steps = 0;
    last_saved_ = first_step;
    const double run_start = now_seconds();
    std::int64_t done = first_step;
    for (std::int64_t step = first_step; step < total_steps; ++step) {
      const Index epoch = step / per_epoch, in_epoch = step % per_epoch;
      const auto global = sampler->global_batch(epoch, in_epoch);
      const auto mine = sampler->rank_batch(epoch, in_epoch);
      const double lr = schedule.at(step);
      const double t0 = now_seconds();
      const Index global_targets = count_targets(data.train, global);
      const bool computed = global_targets > 0;
      const StepStats stats = trainer_->step(data.train, mine, global_targets, lr, step);
      for (const std::string& line : model_->take_kernel_notes()) note(observer, line);
      if (!stats.finite) skip_nonfinite(stats, observer);  // throws beyond the limit
      const double tokens = static_cast<double>(comm.all_reduce_sum<std::int64_t>(stats.tokens));
      const double dt = now_seconds() - t0;
      done = step + 1;
      const double mean_length = tokens / static_cast<double>(global.size());
      const double flops =
          model_flops_per_token(checkpoint->config(), *layout, static_cast<Index>(mean_length)) *
          tokens;
      if (stats.finite) {  // a skipped step has no loss to average
        window_loss += stats.loss;
        ++window_steps;
        loss_total_ += stats.loss;
        ++loss_steps_;
      }
      if (computed) {
        window_time += dt;
        window_tokens += tokens;
        window_samples += static_cast<double>(global.size());
        window_flops += flops;
      }
      if (computed && done - first_step > args.throughput_warmup_steps) {
        totals_.time += dt;
        totals_.tokens += tokens;
        totals_.samples += static_cast<double>(global.size());
        totals_.flops += flops;
        ++totals_.steps;
      }
      if (leader && observer)
        observer->step(
            {done, total_steps, stats.loss, lr, computed ? tokens / dt : kNoValue, computed});
      if (done % args.logging_steps == 0 || done == total_steps) {
        const std::vector<double> rss = all_peak_rss();
        const double loss =
            window_steps > 0 ? window_loss / static_cast<double>(window_steps) : kNoValue;
        const auto rate = [&](double amount) {  // null (NaN) when nothing was computed
          return window_time > 0 ? amount / window_time : kNoValue;
        };
        ojson record{{"step", done},
                     {"epoch", static_cast<double>(done) / static_cast<double>(per_epoch)},
                     {"loss", loss},
                     {"lr", lr},
                     {"grad_norm", stats.grad_norm},
                     {"tokens_per_second", rate(window_tokens)},
                     {"samples_per_second", rate(window_samples)},
                     {"mfu", rate(window_flops) / 1e9 / peak_gflops_},
                     {"peak_rss_mib", rss}};
        add_peak_device_memory(record);
        if (skipped_ > 0) record["skipped_steps"] = skipped_;
        report(observer, record);
        if (window_steps > 0) history_.train.push_back({static_cast<double>(done), loss});
        window_loss = window_time = window_tokens = window_samples = window_flops = 0;
        window_steps = 0;
      }
      if (evaluates_after(done)) evaluate(done, observer);
      // Checkpoints on the schedule and, as HF's Trainer, at the last step: a finished run's
      // checkpoint-N continues it (to more steps or epochs) from where it ended.
      const bool last = done == total_steps;
      if ((args.save_strategy == "steps" && (done % args.save_steps == 0 || last)) ||
          (args.save_strategy == "epoch" && (done % per_epoch == 0 || last)))
        save_checkpoint(done, observer);
      // A stop request is honoured by all ranks at the same step boundary.
      const bool asked = stop && stop();
      if (comm.all_reduce_sum<std::int64_t>(asked ? 1 : 0) > 0 && done < total_steps) {
        outcome_ = {done, true};
        return outcome_;
      }
    }
    runtime_ = now_seconds() - run_start;
    // The final evaluation, unless the schedule just made it.
    if ((args.eval_strategy != "no" || settings.do_eval) && !evaluates_after(total_steps))
      evaluate(total_steps, observer);
    outcome_ = {done, false};
    return outcome_;
  }

  ojson save(RunObserver* observer) override {
    if (outcome_.stopped) {
      if (last_saved_ != outcome_.step) save_checkpoint(outcome_.step, observer);
      draw_curve();
      return ojson{{"checkpoint", checkpoint_dir(outcome_.step).string()}};
    }
    const auto final_params = trainer_->gather_params();  // collective
    if (leader)
      save_peft_adapter(settings.output_dir, *layout, final_params, settings.model_dir.string());
    // The run's peak on every rank, saving included.
    const std::vector<double> peak_rss = all_peak_rss();
    ojson summary{
        {"global_step", total_steps},
        {"epoch", static_cast<double>(total_steps) / static_cast<double>(per_epoch)},
        {"train_runtime", totals_.steps > 0 ? totals_.time : runtime_},
        {"train_samples_per_second", totals_.time > 0 ? totals_.samples / totals_.time : 0.0},
        {"train_steps_per_second",
         totals_.time > 0 ? static_cast<double>(totals_.steps) / totals_.time : 0.0},
        {"train_tokens_per_second", totals_.time > 0 ? totals_.tokens / totals_.time : 0.0},
        {"train_loss", loss_steps_ > 0 ? loss_total_ / static_cast<double>(loss_steps_) : 0.0},
        {"skipped_steps", skipped_},
        {"mfu", totals_.time > 0 ? totals_.flops / totals_.time / 1e9 / peak_gflops_ : 0.0},
        {"throughput_warmup_steps", args.throughput_warmup_steps},
        {"world_size", comm.size()},
        {"peak_rss_mib", peak_rss}};
    add_peak_device_memory(summary);
    if (!history_.eval.empty()) {
      summary["eval_loss"] = history_.eval.back().value;
      summary["eval_perplexity"] = std::exp(history_.eval.back().value);
    }
    if (leader) {
      write_text_file_atomically(settings.output_dir / "train_results.json",
                                 summary.dump(2) + "\n");
      report(observer, summary);
      draw_curve();
    }
    comm.barrier();
    return summary;
  }

 private:
  fs::path checkpoint_dir(std::int64_t step) const {
    return settings.output_dir / ("checkpoint-" + std::to_string(step));
  }

  // On a GPU: the most device memory zerolora held at once on each rank (its allocator's high
  // water mark: weights, activations, workspaces; not the CUDA context), in MiB.
  void add_peak_device_memory(ojson& record) {
    Device& device = rt->device();
    if (device.kind() == DeviceKind::kCpu) return;
    const double mib = static_cast<double>(device.peak_allocated_bytes()) / (1024.0 * 1024.0);
    std::vector<double> all(static_cast<std::size_t>(comm.size()));
    comm.all_gather(&mib, all.data(), sizeof(double));
    record["peak_device_mib"] = all;
  }

  std::vector<double> all_peak_rss() {
    const double rss = peak_rss_mib();
    std::vector<double> all(static_cast<std::size_t>(comm.size()));
    comm.all_gather(&rss, all.data(), sizeof(double));
    return all;
  }

  void evaluate(std::int64_t step, RunObserver* observer) {
    if (eval.mine.empty()) return;
    const double loss =
        trainer_->evaluate(eval.sequences, eval.mine, args.per_device_eval_batch_size) /
        static_cast<double>(std::max<Index>(1, eval.targets));
    if (!leader) return;
    const ojson record{{"step", step},
                       {"epoch", static_cast<double>(step) / static_cast<double>(per_epoch)},
                       {"eval_loss", loss},
                       {"eval_perplexity", std::exp(loss)}};
    report(observer, record);
    history_.eval.push_back({static_cast<double>(step), loss});
    note(observer, "eval at step " + std::to_string(step) + ": loss " + fixed(loss, 4) +
                       ", perplexity " + fixed(std::exp(loss), 3));
  }

  // A record for metrics.jsonl, which the observer hears too (rank 0).
  void report(RunObserver* observer, const ojson& record) {
    if (!leader) return;
    metrics_log_->write(record);
    if (observer) observer->metrics(record);
  }

  // Loads the checkpoint --resume_from_checkpoint names (or the output directory's latest) into
  // the trainer, after its signature check; the run goes on from its step.
  void resume(RunObserver* observer) {
    const auto saved = list_checkpoints(settings.output_dir);
    fs::path dir = settings.resume_from_checkpoint;
    if (dir == "last" || dir == "latest" || dir == "true" || dir == "True") {
      if (saved.empty())
        throw UsageError(settings.output_dir.string() +
                         ": no checkpoint-* directory to resume from");
      dir = saved.back().second;
    }
    const ResumePoint resumed = read_resume_point(dir, signature_);
    // A finished run's last checkpoint, resumed by the same command: HF's Trainer does not
    // refuse it, but there is nothing to train, and the summary would be rewritten with zero
    // rates; refused before its files are read, the finished run's outputs kept as they are.
    if (resumed.step >= total_steps)
      throw ConfigError(
          dir.string() + " is at step " + std::to_string(resumed.step) + " and this run has " +
          std::to_string(total_steps) + " steps: nothing is left to train (" +
          (args.max_steps > 0 ? "raise --max_steps" : "raise --num_train_epochs") +
          " to go on); the files in " + settings.output_dir.string() + " are as they were");
    load_training_checkpoint(dir, resumed, checkpoint->config(), *layout, *trainer_);
    first_step = resumed.step;
    note(observer, "resumed from " + dir.string() + " at step " + std::to_string(first_step) +
                       (resumed.world_size == comm.size()
                            ? std::string()
                            : " (written by " + std::to_string(resumed.world_size) +
                                  " rank(s); optimizer state resharded for " +
                                  std::to_string(comm.size()) + ")"));
    // Later checkpoints of an earlier run (this one continues from an earlier step) stay until
    // this run's own replace them; until then "last" would pick them.
    if (!saved.empty() && saved.back().first > first_step)
      note(observer, "warning: " + settings.output_dir.string() +
                         " holds a later checkpoint of an earlier run (" +
                         saved.back().second.filename().string() +
                         "); --resume_from_checkpoint last picks it until this run writes one "
                         "past it");
  }

  void save_checkpoint(std::int64_t step, RunObserver* observer) {
    save_training_checkpoint(comm, settings.output_dir, step, *layout, *trainer_, signature_,
                             settings.model_dir.string(), args.save_total_limit);
    last_saved_ = step;
    note(observer, "saved " + checkpoint_dir(step).string());
  }

  // A step that went non-finite (and made no update): skipped and counted while the limit
  // allows, else the run ends here, every rank together (they all saw the same sums).
  void skip_nonfinite(const StepStats& stats, RunObserver* observer) {
    const std::int64_t limit = args.skip_nonfinite_steps;
    if (skipped_ < limit) {
      ++skipped_;
      note(observer, "warning: skipped " + stats.nonfinite + " (no update; " +
                         std::to_string(skipped_) + " of at most " + std::to_string(limit) +
                         " skipped steps)");
      return;
    }
    const std::string kept = last_saved_ > 0
                                 ? "the last checkpoint (" + checkpoint_dir(last_saved_).string() +
                                       ") and everything else already in " +
                                       settings.output_dir.string() + " are as they were"
                                 : "no checkpoint was written yet; the files already in " +
                                       settings.output_dir.string() + " are as they were";
    throw NumericalError(
        "training went non-finite at " + stats.nonfinite + ". Nothing was written for it: " + kept +
        (limit > 0 ? "; " + std::to_string(limit) + " non-finite step(s) were skipped before"
                   : std::string()) +
        ". Lower --learning_rate, or let a few such steps pass with --skip_nonfinite_steps N");
  }

  void draw_curve() const {
    if (leader)
      write_loss_curve_svg(settings.output_dir / "loss_curve.svg", history_.train, history_.eval,
                           "zerolora: " + settings.model_dir.filename().string());
  }

  std::unique_ptr<Communicator> parameter_comm_;  // the store's, on a GPU (run_device.hpp)
  std::unique_ptr<WeightProvider<Weight>> weights_;
  std::optional<LlamaModel<P>> model_;
  std::optional<LoraTrainer<P>> trainer_;
  RunSignature signature_;
  std::unique_ptr<MetricsLog> metrics_log_;  // rank 0
  MetricsHistory history_;
  double peak_gflops_ = 1, runtime_ = 0, loss_total_ = 0;
  std::int64_t loss_steps_ = 0;  // steps whose loss is in loss_total_
  std::int64_t skipped_ = 0;     // non-finite steps skipped (--skip_nonfinite_steps)
  Totals totals_;
  std::int64_t last_saved_ = 0;
  RunOutcome outcome_;
};

std::unique_ptr<TrainingRun::Impl> make_run(Communicator& comm, RunSettings settings,
                                            RunObserver* observer) {
  PreparedSettings prepared = prepare_settings(comm, std::move(settings));
  if (prepared.settings.args.bf16)
    return std::make_unique<PolicyRun<Bf16Policy>>(comm, std::move(prepared), observer);
  return std::make_unique<PolicyRun<Fp32Policy>>(comm, std::move(prepared), observer);
}

}  // namespace

TrainingRun::TrainingRun(Communicator& comm, RunSettings settings, RunObserver* observer)
    : impl_(make_run(comm, std::move(settings), observer)) {}
TrainingRun::~TrainingRun() = default;

std::int64_t TrainingRun::total_steps() const {
  return impl_->total_steps;
}
std::int64_t TrainingRun::first_step() const {
  return impl_->first_step;
}
const TrainingArguments& TrainingRun::arguments() const {
  return impl_->args;
}
RunOutcome TrainingRun::run(const StopRequest& stop, RunObserver* observer) {
  return impl_->run(stop, observer);
}
nlohmann::ordered_json TrainingRun::save(RunObserver* observer) {
  return impl_->save(observer);
}

}  // namespace zerolora
