// `zerolora train`: LoRA fine-tuning, one process or `mpirun -np W` ranks (ZeRO-3). Flags,
// signals and printing only; the run itself is the library's TrainingRun.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <memory>
#include <optional>

#include "apps/commands.hpp"
#include "apps/hf_args.hpp"
#include "apps/progress.hpp"
#include "apps/train_flags.hpp"
#include "comm/launch.hpp"
#include "comm/rank_guard.hpp"
#include "train/training_run.hpp"

namespace zerolora::cli {
namespace {

// Set by SIGINT/SIGTERM/SIGUSR1: finish the step, save a checkpoint, exit. A signal handler
// can reach nothing but a global; this one lives here, in the executable, not the library.
std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int signal) {
  g_stop_signal.store(signal);
}

void print_line(const std::string& line) {
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

// Rank 0's console: notes as lines, steps through the progress bar once training starts.
class ConsoleObserver : public RunObserver {
 public:
  explicit ConsoleObserver(std::int64_t logging_steps) : logging_steps_(logging_steps) {}

  void start(std::int64_t first_step, std::int64_t total_steps, bool bar) {
    progress_.emplace(first_step, total_steps, bar && Progress::stdout_is_terminal());
  }
  void finish() {
    if (progress_) progress_->finish();
  }
  void note(const std::string& line) override {
    progress_ ? progress_->message(line) : print_line(line);
  }
  void step(const StepProgress& p) override {
    if (progress_)
      progress_->step(p.step, p.loss, p.learning_rate, p.tokens_per_second, p.computed,
                      logging_steps_);
  }

 private:
  std::int64_t logging_steps_;
  std::optional<Progress> progress_;
};

int train_main(const TrainFlags& f, Communicator& comm) {
  const bool leader = comm.rank() == 0;
  ConsoleObserver console(f.args.logging_steps);
  RunObserver* observer = leader ? &console : nullptr;
  const LaunchInfo launch = detect_launch();
  if (leader) {
    if (!f.ignored_flags.empty()) {
      std::string list;
      for (const auto& flag : f.ignored_flags) list += (list.empty() ? "" : ", ") + flag;
      console.note(
          "warning: these flags mean nothing to zerolora (hardware, graph modes, "
          "logging, hub or launcher settings) and are ignored: " +
          list);
    }
    if (!launch.note.empty()) console.note("note: " + launch.note);
  }
  TrainingRun run(comm, run_settings(f), observer);
  // Under a launcher stdout is a pipe or pseudo-terminal whatever the user's is: plain lines.
  console.start(run.first_step(), run.total_steps(), !f.disable_tqdm && launch.launcher.empty());
  // The Python package's `zerolora.main` may train several times in one process: start each
  // run unstopped, and give the process its handlers back after.
  g_stop_signal.store(0);
  const auto previous_int = std::signal(SIGINT, on_stop_signal);
  const auto previous_term = std::signal(SIGTERM, on_stop_signal);
  const auto previous_usr1 = std::signal(SIGUSR1, on_stop_signal);
  const RunOutcome outcome = run.run([] { return g_stop_signal.load() != 0; }, observer);
  std::signal(SIGINT, previous_int);
  std::signal(SIGTERM, previous_term);
  std::signal(SIGUSR1, previous_usr1);
  console.finish();
  const auto saved = run.save(observer);
  if (!leader) return 0;
  if (outcome.stopped) {
    print_line("stopped by signal after step " + std::to_string(outcome.step) +
               "; continue with --resume_from_checkpoint last");
    return 0;
  }
  const std::string dir = f.output_dir;
  print_line("done: " + saved.dump());
  print_line("adapter: " + dir + " (adapter_config.json, adapter_model.safetensors); metrics: " +
             dir + "/metrics.jsonl; loss curve: " + dir + "/loss_curve.svg");
  return 0;
}

}  // namespace

Command add_train(CLI::App& app, ArgumentRewriter& rewrite) {
  auto* cmd = app.add_subcommand("train",
                                 "LoRA fine-tuning: one process, or `mpirun -np W zerolora train "
                                 "...` for ZeRO-3 across W ranks. Hugging Face command lines "
                                 "paste as is (unambiguous prefixes, --flag True/False); flags "
                                 "that mean nothing here are listed in one warning");
  auto f = std::make_shared<TrainFlags>();
  add_train_flags(*cmd, *f);
  rewrite = [f, cmd](const std::vector<std::string>& args) {
    HfArguments hf = rewrite_hf_arguments(args, *cmd);
    f->ignored_flags = std::move(hf.ignored);
    return hf.args;
  };
  return [f, cmd] {
    record_explicit_flags(*cmd, *f);
    auto comm = make_communicator();
    return run_guarded(*comm, [&] { return train_main(*f, *comm); });
  };
}

}  // namespace zerolora::cli
