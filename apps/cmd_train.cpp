// `zerolora train`: LoRA fine-tuning, one process or `mpirun -np W` ranks (ZeRO-3).
#include <sys/resource.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "apps/commands.hpp"
#include "apps/model_files.hpp"
#include "apps/train_flags.hpp"
#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/precision.hpp"
#include "core/rng.hpp"
#include "data/sampler.hpp"
#include "dist/rank_guard.hpp"
#include "dist/sharded_weights.hpp"
#include "io/json_file.hpp"
#include "io/peft_adapter.hpp"
#include "model/flops.hpp"
#include "model/llama_weights.hpp"
#include "ops/gemm_peak.hpp"
#include "train/metrics.hpp"
#include "train/train_checkpoint.hpp"

namespace zerolora::cli {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

// Set by SIGINT/SIGTERM/SIGUSR1: finish the step, save a checkpoint, exit. A signal handler
// can reach nothing but a global; this one lives here, in the executable, not the library.
std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int signal) {
  g_stop_signal.store(signal);
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

int default_threads(int requested) {
  if (requested > 0) return requested;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  const int ranks_here = local ? std::max(1, std::atoi(local)) : 1;
  return std::max(1, cores / ranks_here);
}

// Files a zerolora run writes into output_dir (and may replace with --overwrite_output_dir).
bool is_our_output(const fs::path& p) {
  const std::string name = p.filename().string();
  return name.rfind("checkpoint-", 0) == 0 || name == "adapter_config.json" ||
         name == "adapter_model.safetensors" || name == "metrics.jsonl" ||
         name == "loss_curve.svg" || name == "train_results.json";
}

void prepare_output_dir(const fs::path& dir, bool overwrite, bool resuming, bool leader) {
  if (fs::exists(dir) && !fs::is_directory(dir))
    throw UsageError(dir.string() + ": --output_dir is a file");
  if (resuming || !fs::exists(dir) || fs::is_empty(dir)) {
    if (leader) fs::create_directories(dir);
    return;
  }
  std::vector<fs::path> ours, theirs;
  for (const auto& entry : fs::directory_iterator(dir))
    (is_our_output(entry.path()) ? ours : theirs).push_back(entry.path());
  if (!theirs.empty())
    throw UsageError(dir.string() + ": --output_dir holds files zerolora did not write (e.g. " +
                     theirs.front().filename().string() + "); choose an empty or new directory");
  if (!overwrite)
    throw UsageError(dir.string() + ": --output_dir already holds a training run (" +
                     ours.front().filename().string() +
                     "); pass --resume_from_checkpoint last to continue it, or "
                     "--overwrite_output_dir to start over");
  if (leader)
    for (const auto& p : ours) fs::remove_all(p);
}

std::uint64_t hash_text(const std::string& text) {
  std::uint64_t h = 0x9e37;
  for (unsigned char c : text) h = hash_combine(h, c);
  return h;
}

// Validation sequences spread over the ranks, every rank with the same count (padding:
// copies of sequence 0 with no labels, which add no loss but keep the passes in step).
struct EvalSet {
  std::vector<TokenSequence> sequences;
  std::vector<Index> mine;
  Index targets = 0;
};

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
  for (Index i = 0; i < n; ++i) all[i] = i;
  set.targets = count_targets(validation, all);
  return set;
}

template <class P>
int run_train(TrainFlags& f, Communicator& comm,
              const std::optional<DeepSpeedScheduler>& ds_scheduler) {
  using Weight = typename P::Weight;
  TrainingArguments& a = f.args;
  const bool leader = comm.rank() == 0;
  const int W = comm.size();
  auto say = [&](const std::string& line) {
    if (leader) {
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
    }
  };
  const fs::path model_dir = f.model_name_or_path, output_dir = f.output_dir;
  const bool resuming = !f.resume_from_checkpoint.empty();
  const bool residual_in_bf16 = resolve_bf16_residual(a.residual_dtype, a.bf16);
  if (resuming && f.overwrite_output_dir)
    throw UsageError(
        "--resume_from_checkpoint continues a run and --overwrite_output_dir discards it: give "
        "one");
  prepare_output_dir(output_dir, f.overwrite_output_dir, resuming, leader);
  comm.barrier();

  Runtime rt(default_threads(f.threads));
  const Checkpoint checkpoint(model_dir);
  const LlamaConfig& config = checkpoint.config();
  const Tokenizer tokenizer = open_tokenizer(model_dir, config);

  // Data: every rank builds the same dataset (it is small next to the model).
  const DataOptions data_options = f.data.resolve(tokenizer, &config);
  const TrainingData data = build_training_data(rt, data_options, tokenizer);
  const DataReport& dr = data.report;
  say("data: " + std::to_string(dr.records_read) + " records (" +
      std::to_string(dr.skipped_empty_output) + " skipped: empty output), " +
      std::to_string(dr.train_examples) + " train / " + std::to_string(dr.validation_examples) +
      " validation examples, " + std::to_string(dr.truncated) + " truncated at " +
      std::to_string(data_options.tokenize.max_seq_length) + " tokens (" +
      std::to_string(dr.without_targets) + " of them dropped: no response token left); " +
      std::to_string(data.train.size()) + " training sequences, " +
      std::to_string(dr.train_tokens) + " tokens (" + std::to_string(dr.train_label_tokens) +
      " with labels)");

  LoraConfig lora;
  lora.rank = a.lora_rank;
  lora.alpha = a.lora_alpha;
  lora.dropout = a.lora_dropout;
  std::string targets;
  for (const auto& t : a.lora_target_modules) targets += (targets.empty() ? "" : ",") + t;
  lora.targets = parse_lora_targets(targets);
  lora.use_rslora = a.use_rslora;
  lora.init = f.lora_init == "gaussian" ? LoraInit::kGaussian : LoraInit::kKaimingUniform;
  const LoraLayout layout(config, lora);

  // ZeRO-3 shards the base weights; stages 0-2 keep them whole on every rank; stage 0 also
  // keeps every LoRA tensor's optimizer state whole.
  const double load_start = now_seconds();
  std::unique_ptr<WeightProvider<Weight>> weights;
  if (a.zero_stage == 3 && W > 1)
    weights = std::make_unique<ShardedWeights<Weight>>(ShardedWeights<Weight>::load(
        rt, comm, checkpoint, ZeroOptions{a.prefetch_depth, a.max_live_elements}));
  else
    weights = std::make_unique<LlamaWeights<Weight>>(load_llama_weights<Weight>(rt, checkpoint));
  say("model: " + model_dir.string() + ", " + std::to_string(config.num_layers) +
      " layers, hidden " + std::to_string(config.hidden_size) + ", " + std::string(P::kName) +
      (residual_in_bf16 ? " (bf16 residual)" : "") + ", loaded in " +
      std::to_string(now_seconds() - load_start).substr(0, 5) + " s; " + std::to_string(W) +
      " rank(s) x " + std::to_string(rt.threads()) + " thread(s), ZeRO stage " +
      std::to_string(a.zero_stage));
  ComputeOptions compute;
  compute.recompute = !a.gradient_checkpointing                ? Recompute::kNone
                      : a.recompute_granularity == "selective" ? Recompute::kSelective
                                                               : Recompute::kFull;
  compute.attention.softmax_bf16 = a.attn_softmax_bf16;
  compute.bf16_residual = residual_in_bf16;
  LlamaModel<P> model(rt, *weights, &layout, compute);

  std::vector<float> init(static_cast<std::size_t>(layout.size()));
  init_lora_params<float>(init, layout, a.seed);
  TrainerOptions options;
  options.micro_batch = a.per_device_train_batch_size;
  options.adamw = AdamWConfig{a.adam_beta1, a.adam_beta2, a.adam_epsilon, a.weight_decay};
  options.max_grad_norm = a.max_grad_norm;
  options.seed = a.seed;
  options.persistence_threshold =
      a.zero_stage == 0 ? std::numeric_limits<Index>::max() : a.persistence_threshold;
  LoraTrainer<P> trainer(rt, comm, model, layout, options, init);
  std::vector<float>().swap(init);  // the trainer keeps only this rank's part
  require_same_on_all_ranks(
      comm, hash_text(std::to_string(data.train.size()) + "/" + std::to_string(dr.train_tokens)),
      "the training data");

  std::vector<Index> lengths;
  for (const auto& s : data.train) lengths.push_back(s.size());
  SamplerOptions sampling;
  sampling.global_batch = a.per_device_train_batch_size * a.gradient_accumulation_steps * W;
  sampling.world = W;
  sampling.rank = comm.rank();
  sampling.seed = a.seed;
  const DistributedSampler sampler(lengths, sampling);
  const Index per_epoch = sampler.steps_per_epoch();
  const std::int64_t total_steps =
      a.max_steps > 0
          ? a.max_steps
          : std::max<std::int64_t>(
                1, static_cast<std::int64_t>(std::ceil(a.num_train_epochs * per_epoch)));
  const LrSchedule schedule = make_lr_schedule(a, ds_scheduler, total_steps);
  say("training: " + std::to_string(total_steps) + " steps (" + std::to_string(per_epoch) +
      " per epoch), global batch " + std::to_string(sampling.global_batch) + " = " +
      std::to_string(a.per_device_train_batch_size) + " x " +
      std::to_string(a.gradient_accumulation_steps) + " accumulation x " + std::to_string(W) +
      " rank(s); LoRA r " + std::to_string(lora.rank) + " alpha " +
      std::to_string(lora.alpha).substr(0, 6) + " on " + targets + " (" +
      std::to_string(layout.size()) + " parameters); lr " + schedule.describe());

  // What a resumed run must share with the checkpoint it resumes.
  const RunSignature signature{
      {"model", std::to_string(config.num_layers) + "x" + std::to_string(config.hidden_size) + "/" +
                    std::to_string(config.vocab_size)},
      {"lora", std::to_string(lora.rank) + "/" + std::to_string(lora.alpha) + "/" +
                   std::to_string(lora.dropout) + "/" + targets +
                   (lora.use_rslora ? "/rslora" : "")},
      {"global_batch", std::to_string(sampling.global_batch)},
      {"seed", std::to_string(a.seed)},
      {"data", std::to_string(data.train.size()) + " sequences, " +
                   std::to_string(dr.train_tokens) + " tokens"},
      // (an fp32 residual adds nothing: checkpoints from before the option read "bf16")
      {"precision", std::string(P::kName) + (compute.bf16_residual ? ", bf16 residual" : "")},
      {"schedule", std::string(a.lr_scheduler_type) + (ds_scheduler ? " (DeepSpeed)" : "") +
                       ", lr " + std::to_string(a.learning_rate) + ", warmup " +
                       std::to_string(a.warmup_steps) + "/" + std::to_string(a.warmup_ratio)},
      {"zero_stage", std::to_string(a.zero_stage)}};

  std::int64_t start_step = 0;
  if (resuming) {
    fs::path dir = f.resume_from_checkpoint;
    if (dir == "last" || dir == "latest" || dir == "true" || dir == "True") {
      dir = find_latest_checkpoint(output_dir);
      if (dir.empty())
        throw UsageError(output_dir.string() + ": no checkpoint-* directory to resume from");
    }
    const ResumePoint resumed =
        load_training_checkpoint(comm, dir, config, layout, trainer, signature);
    start_step = resumed.step;
    say("resumed from " + dir.string() + " at step " + std::to_string(start_step) +
        (resumed.world_size == W
             ? std::string()
             : " (written by " + std::to_string(resumed.world_size) +
                   " rank(s); optimizer state resharded for " + std::to_string(W) + ")"));
  }

  std::unique_ptr<MetricsLog> metrics;
  std::vector<CurvePoint> train_curve, eval_curve;
  if (leader) {
    const fs::path log_path = output_dir / "metrics.jsonl";
    if (resuming && fs::exists(log_path)) {  // keep the history up to the checkpoint
      std::ifstream in(log_path);
      std::vector<std::string> kept;
      for (std::string line; std::getline(in, line);) {
        const auto j = nlohmann::json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.contains("step") || j["step"].get<std::int64_t>() > start_step)
          continue;
        kept.push_back(line);
        if (j.contains("loss"))
          train_curve.push_back({j["step"].get<double>(), j["loss"].get<double>()});
        if (j.contains("eval_loss"))
          eval_curve.push_back({j["step"].get<double>(), j["eval_loss"].get<double>()});
      }
      std::string text;
      for (const auto& line : kept) text += line + "\n";
      write_text_file_atomically(log_path, text);
    }
    metrics = std::make_unique<MetricsLog>(log_path, resuming);
  }
  const EvalSet eval = make_eval_set(data.validation, comm.rank(), W);
  // Under mpirun stdout is a pseudo-terminal whatever mpirun's own is: plain lines there.
  Progress progress(
      start_step, total_steps,
      leader && !f.disable_tqdm && !launched_by_mpirun() && Progress::stdout_is_terminal());
  auto note = [&](const std::string& line) {
    if (leader) progress.message(line);
  };
  auto evaluate = [&](std::int64_t step) {
    if (eval.mine.empty()) return;
    const double loss = trainer.evaluate(eval.sequences, eval.mine, a.per_device_eval_batch_size) /
                        static_cast<double>(std::max<Index>(1, eval.targets));
    if (!leader) return;
    char line[160];
    std::snprintf(line, sizeof(line), "eval at step %lld: loss %.4f, perplexity %.3f",
                  static_cast<long long>(step), loss, std::exp(loss));
    note(line);
    metrics->write(ojson{{"step", step},
                         {"epoch", static_cast<double>(step) / static_cast<double>(per_epoch)},
                         {"eval_loss", loss},
                         {"eval_perplexity", std::exp(loss)}});
    eval_curve.push_back({static_cast<double>(step), loss});
  };
  auto draw_curve = [&] {
    if (leader)
      write_loss_curve_svg(output_dir / "loss_curve.svg", train_curve, eval_curve,
                           "zerolora: " + model_dir.filename().string());
  };
  auto save = [&](std::int64_t step) {
    save_training_checkpoint(comm, output_dir, step, layout, trainer, signature, model_dir.string(),
                             a.save_total_limit);
    note("saved " + (output_dir / ("checkpoint-" + std::to_string(step))).string());
  };

  // MFU's denominator: the bf16 GEMM rate of all ranks, measured together as they will run.
  const double peak_gflops = comm.all_reduce_sum(measure_bf16_gemm_gflops(rt, 1024, 5));
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGUSR1, on_stop_signal);

  double window_loss = 0, window_time = 0, window_tokens = 0, window_samples = 0;
  std::int64_t window_steps = 0, last_saved = start_step;
  double summary_time = 0, summary_tokens = 0, summary_samples = 0, summary_flops = 0,
         loss_total = 0;
  std::int64_t summary_steps = 0;
  const double run_start = now_seconds();
  for (std::int64_t step = start_step; step < total_steps; ++step) {
    const Index epoch = step / per_epoch, in_epoch = step % per_epoch;
    const auto global = sampler.global_batch(epoch, in_epoch);
    const auto mine = sampler.rank_batch(epoch, in_epoch);
    const double lr = schedule.at(step);
    const double t0 = now_seconds();
    const StepStats stats =
        trainer.step(data.train, mine, count_targets(data.train, global), lr, step);
    const double tokens = static_cast<double>(comm.all_reduce_sum<std::int64_t>(stats.tokens));
    const double dt = now_seconds() - t0;
    const std::int64_t done = step + 1;
    const double mean_length = tokens / static_cast<double>(global.size());
    const double flops =
        model_flops_per_token(config, layout, static_cast<Index>(mean_length)) * tokens;
    window_loss += stats.loss;
    window_time += dt;
    window_tokens += tokens;
    window_samples += static_cast<double>(global.size());
    ++window_steps;
    loss_total += stats.loss;
    if (done - start_step > a.throughput_warmup_steps) {
      summary_time += dt;
      summary_tokens += tokens;
      summary_samples += static_cast<double>(global.size());
      summary_flops += flops;
      ++summary_steps;
    }
    if (leader) progress.step(done, stats.loss, lr, tokens / dt, a.logging_steps);
    if (done % a.logging_steps == 0 || done == total_steps) {
      const double rss = peak_rss_mib();
      std::vector<double> all_rss(static_cast<std::size_t>(W));
      comm.all_gather(&rss, all_rss.data(), sizeof(double));
      if (leader) {
        const double loss = window_loss / static_cast<double>(window_steps);
        metrics->write(ojson{{"step", done},
                             {"epoch", static_cast<double>(done) / static_cast<double>(per_epoch)},
                             {"loss", loss},
                             {"lr", lr},
                             {"grad_norm", stats.grad_norm},
                             {"tokens_per_second", window_tokens / window_time},
                             {"samples_per_second", window_samples / window_time},
                             {"mfu", flops / dt / 1e9 / peak_gflops},
                             {"peak_rss_mib", all_rss}});
        train_curve.push_back({static_cast<double>(done), loss});
      }
      window_loss = window_time = window_tokens = window_samples = 0;
      window_steps = 0;
    }
    const bool epoch_end = done % per_epoch == 0;
    if ((a.eval_strategy == "steps" &&
         done % (a.eval_steps > 0 ? a.eval_steps : a.logging_steps) == 0) ||
        (a.eval_strategy == "epoch" && epoch_end))
      evaluate(done);
    if (done < total_steps && ((a.save_strategy == "steps" && done % a.save_steps == 0) ||
                               (a.save_strategy == "epoch" && epoch_end))) {
      save(done);
      last_saved = done;
    }
    // A stop request (signal) is honoured by all ranks at the same step boundary.
    if (comm.all_reduce_sum<std::int64_t>(g_stop_signal.load() != 0 ? 1 : 0) > 0 &&
        done < total_steps) {
      if (last_saved != done) save(done);
      draw_curve();
      if (leader) progress.finish();
      say("stopped by signal after step " + std::to_string(done) +
          "; continue with --resume_from_checkpoint last");
      return 0;
    }
  }
  if (leader) progress.finish();
  const double runtime = now_seconds() - run_start;
  if (a.eval_strategy != "no" || f.do_eval) {
    if (!(a.eval_strategy == "steps" &&
          total_steps % (a.eval_steps > 0 ? a.eval_steps : a.logging_steps) == 0) &&
        !(a.eval_strategy == "epoch" && total_steps % per_epoch == 0))
      evaluate(total_steps);
  }
  const auto final_params = trainer.gather_params();  // collective
  if (leader) save_peft_adapter(output_dir, layout, final_params, model_dir.string());
  // The run's peak on every rank, saving included.
  const double final_rss = peak_rss_mib();
  std::vector<double> peak_rss(static_cast<std::size_t>(W));
  comm.all_gather(&final_rss, peak_rss.data(), sizeof(double));
  if (leader) {
    const std::int64_t trained = total_steps - start_step;
    ojson summary{
        {"global_step", total_steps},
        {"epoch", static_cast<double>(total_steps) / static_cast<double>(per_epoch)},
        {"train_runtime", summary_steps > 0 ? summary_time : runtime},
        {"train_samples_per_second", summary_time > 0 ? summary_samples / summary_time : 0.0},
        {"train_steps_per_second",
         summary_time > 0 ? static_cast<double>(summary_steps) / summary_time : 0.0},
        {"train_tokens_per_second", summary_time > 0 ? summary_tokens / summary_time : 0.0},
        {"train_loss", trained > 0 ? loss_total / static_cast<double>(trained) : 0.0},
        {"mfu", summary_time > 0 ? summary_flops / summary_time / 1e9 / peak_gflops : 0.0},
        {"throughput_warmup_steps", a.throughput_warmup_steps},
        {"world_size", W},
        {"peak_rss_mib", peak_rss}};
    if (!eval_curve.empty()) {
      summary["eval_loss"] = eval_curve.back().value;
      summary["eval_perplexity"] = std::exp(eval_curve.back().value);
    }
    write_text_file_atomically(output_dir / "train_results.json", summary.dump(2) + "\n");
    metrics->write(summary);
    draw_curve();
    std::printf("done: %s\n", summary.dump().c_str());
    std::printf(
        "adapter: %s (adapter_config.json, adapter_model.safetensors); metrics: %s; loss curve: "
        "%s\n",
        output_dir.c_str(), (output_dir / "metrics.jsonl").c_str(),
        (output_dir / "loss_curve.svg").c_str());
  }
  comm.barrier();
  return 0;
}

int train_main(TrainFlags& f, Communicator& comm) {
  const fs::path model_dir = f.model_name_or_path;
  if (!fs::is_directory(model_dir))
    throw IoError(model_dir.string() + ": --model_name_or_path is not a directory");
  const LlamaConfig config = LlamaConfig::load(model_dir / "config.json");
  std::optional<DeepSpeedScheduler> ds_scheduler;
  if (!f.deepspeed.empty()) {
    const auto ds = read_json_file(f.deepspeed);
    const DeepSpeedResult result = apply_deepspeed_config(
        ds, f.args, comm.size(), config.hidden_size, LayerLayout(config).size(), f.deepspeed);
    ds_scheduler = result.scheduler;
    if (comm.rank() == 0) {
      if (!result.ignored_keys.empty()) {
        std::string keys;
        for (const auto& k : result.ignored_keys) keys += (keys.empty() ? "" : ", ") + k;
        std::printf("warning: %s: these keys mean nothing to zerolora and are ignored: %s\n",
                    f.deepspeed.c_str(), keys.c_str());
      }
      for (const auto& n : result.notes)
        std::printf("note: %s: %s\n", f.deepspeed.c_str(), n.c_str());
    }
  }
  return f.args.bf16 ? run_train<Bf16Policy>(f, comm, ds_scheduler)
                     : run_train<Fp32Policy>(f, comm, ds_scheduler);
}

}  // namespace

Command add_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train",
                                 "LoRA fine-tuning: one process, or `mpirun -np W zerolora train "
                                 "...` for ZeRO-3 across W ranks");
  auto f = std::make_shared<TrainFlags>();
  add_train_flags(*cmd, *f);
  return [f, cmd] {
    record_explicit_flags(*cmd, *f);
    auto comm = make_communicator();
    return run_guarded(*comm, [&] { return train_main(*f, *comm); });
  };
}

}  // namespace zerolora::cli
