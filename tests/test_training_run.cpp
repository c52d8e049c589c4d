// The training run through the library (train/training_run.hpp), on the demo's real tiny
// model and instruction set: its outputs, what the observer hears, the evaluation schedule,
// a stop request and resume equal to an uninterrupted run, and refusals that leave the output
// directory as it was.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "core/error.hpp"
#include "test_util.hpp"
#include "train/training_run.hpp"

namespace zerolora {
namespace {

namespace fs = std::filesystem;

struct Recorder : RunObserver {
  void note(const std::string& line) override { notes.push_back(line); }
  void step(const StepProgress& p) override { losses[p.step] = p.loss; }
  void metrics(const nlohmann::ordered_json& record) override { records.push_back(record); }
  bool noted(const std::string& part) const {
    for (const auto& n : notes)
      if (n.find(part) != std::string::npos) return true;
    return false;
  }
  std::vector<std::string> notes;
  std::map<std::int64_t, double> losses;  // step -> loss
  std::vector<nlohmann::ordered_json> records;
};

class TrainingRunTest : public ::testing::Test {
 protected:
  RunSettings settings(const std::string& output) const {
    RunSettings s;
    s.model_dir = testing::stories_model_dir();
    s.output_dir = temp_ / output;
    s.threads = 2;
    s.data.train_file = testing::demo_dir() / "instructions.json";
    s.data.tokenize.max_seq_length = 192;
    s.data.validation_split_percentage = 2;
    s.args.bf16 = false;  // fp32: runs compare exactly
    s.args.max_steps = 6;
    s.args.per_device_train_batch_size = 2;
    s.args.learning_rate = 2e-3;
    s.args.lr_scheduler_type = "constant";
    s.args.lora_rank = 4;
    s.args.lora_dropout = 0.1;
    s.args.lora_target_modules = {"q_proj", "k_proj", "v_proj", "o_proj"};
    s.args.logging_steps = 1;
    s.args.save_strategy = "no";
    return s;
  }
  // The ConfigError a run with these settings is refused with (a test failure where none).
  [[nodiscard]] std::string refusal(const RunSettings& s) {
    try {
      TrainingRun run(*comm_, s);
    } catch (const ConfigError& e) {
      return e.what();
    }
    ADD_FAILURE() << "no ConfigError";
    return "";
  }
  std::unique_ptr<Communicator> comm_ = make_local_communicator();
  testing::TempDir temp_;
};

TEST_F(TrainingRunTest, WritesTheAdapterMetricsAndSummaryAndTellsTheObserver) {
  Recorder heard;
  RunSettings s = settings("run");
  s.args.eval_strategy = "steps";
  s.args.eval_steps = 2;
  s.args.eval_delay = 4;  // HF's: no evaluation before step 4
  TrainingRun run(*comm_, s, &heard);
  EXPECT_EQ(run.total_steps(), 6);
  EXPECT_EQ(run.first_step(), 0);
  EXPECT_TRUE(heard.noted("data: 1000 records"));
  EXPECT_TRUE(heard.noted("training: 6 steps"));
  const RunOutcome outcome = run.run(nullptr, &heard);
  EXPECT_EQ(outcome.step, 6);
  EXPECT_FALSE(outcome.stopped);
  const auto summary = run.save(&heard);
  EXPECT_EQ(summary["global_step"].get<std::int64_t>(), 6);
  for (const char* file : {"adapter_config.json", "adapter_model.safetensors", "metrics.jsonl",
                           "loss_curve.svg", "train_results.json"})
    EXPECT_TRUE(fs::exists(s.output_dir / file)) << file;
  EXPECT_EQ(heard.losses.size(), 6u);
  std::vector<std::int64_t> evaluated;
  int logs = 0;
  for (const auto& r : heard.records) {
    if (r.contains("eval_loss") && r.contains("step"))  // (the summary has eval_loss too)
      evaluated.push_back(r["step"].get<std::int64_t>());
    logs += r.contains("loss");
  }
  EXPECT_EQ(evaluated, (std::vector<std::int64_t>{4, 6}));
  EXPECT_EQ(logs, 6);
  EXPECT_TRUE(heard.records.back().contains("train_runtime"));  // the summary, last
  EXPECT_TRUE(heard.noted("eval at step 4"));
  std::ifstream log(s.output_dir / "metrics.jsonl");
  std::string line;
  int lines = 0;
  while (std::getline(log, line)) ++lines;
  EXPECT_EQ(lines, static_cast<int>(heard.records.size()));
}

// Short packed sequences leave some steps without a target token (every response cut off):
// those compute nothing, so they log no loss and no rates, and they do not inflate the rates
// of the others (they had logged 10^8 tokens/s and an MFU of 300 from their microseconds).
TEST_F(TrainingRunTest, StepsWithoutTargetsLogNoRatesAndLeaveTheOthersAlone) {
  Recorder heard;
  RunSettings s = settings("no_targets");
  s.data.tokenize.max_seq_length = 128;
  s.data.packing = Packing::kConcat;
  s.peak_tflops = 1;  // MFU against 1 TFLOP/s: a sane run stays far below 1
  TrainingRun run(*comm_, s, &heard);
  run.run(nullptr, &heard);
  // NaN in the record, null in metrics.jsonl.
  const auto absent = [](const nlohmann::ordered_json& v) { return std::isnan(v.get<double>()); };
  int empty = 0, computed = 0;
  for (const auto& r : heard.records) {
    if (!r.contains("loss") || r.contains("eval_loss")) continue;
    if (absent(r["loss"])) {
      ++empty;
      EXPECT_TRUE(absent(r["tokens_per_second"])) << r.dump();
      EXPECT_TRUE(absent(r["samples_per_second"])) << r.dump();
      EXPECT_TRUE(absent(r["mfu"])) << r.dump();
    } else {
      ++computed;
      EXPECT_GT(r["tokens_per_second"].get<double>(), 0) << r.dump();
      EXPECT_LT(r["mfu"].get<double>(), 1.0) << r.dump();
    }
  }
  EXPECT_GT(empty, 0) << "the setting no longer leaves a step without targets";
  EXPECT_GT(computed, 0);
  const auto summary = run.save(&heard);
  EXPECT_LT(summary["mfu"].get<double>(), 1.0);
}

TEST_F(TrainingRunTest, StopThenResumeEqualsAnUninterruptedRun) {
  Recorder straight;
  {
    TrainingRun run(*comm_, settings("straight"), &straight);
    run.run(nullptr, &straight);
    run.save(&straight);
  }
  Recorder first, second;
  RunSettings s = settings("stopped");
  {
    TrainingRun run(*comm_, s, &first);
    int polls = 0;
    const RunOutcome outcome = run.run([&] { return ++polls >= 3; }, &first);
    EXPECT_TRUE(outcome.stopped);
    EXPECT_EQ(outcome.step, 3);
    const auto saved = run.save(&first);
    EXPECT_EQ(fs::path(saved["checkpoint"].get<std::string>()), s.output_dir / "checkpoint-3");
    EXPECT_FALSE(fs::exists(s.output_dir / "adapter_model.safetensors"));
  }
  s.resume_from_checkpoint = "last";
  TrainingRun resumed(*comm_, s, &second);
  EXPECT_EQ(resumed.first_step(), 3);
  EXPECT_TRUE(second.noted("resumed from"));
  resumed.run(nullptr, &second);
  resumed.save(&second);
  ASSERT_EQ(second.losses.size(), 3u);
  for (std::int64_t step = 4; step <= 6; ++step)
    EXPECT_EQ(second.losses.at(step), straight.losses.at(step)) << "step " << step;
  for (std::int64_t step = 1; step <= 3; ++step)
    EXPECT_EQ(first.losses.at(step), straight.losses.at(step)) << "step " << step;
}

// As HF's Trainer, a finished run writes a checkpoint at its last step whatever the schedule,
// and resuming from it continues the run to more steps as if it had been asked for them.
TEST_F(TrainingRunTest, AFinishedRunsLastCheckpointContinuesItToMoreSteps) {
  Recorder straight;
  {
    RunSettings s = settings("straight");
    s.args.max_steps = 8;
    TrainingRun run(*comm_, s, &straight);
    run.run(nullptr, &straight);
    run.save(&straight);
  }
  RunSettings s = settings("extended");
  s.args.save_strategy = "steps";
  s.args.save_steps = 4;
  {
    TrainingRun run(*comm_, s);
    run.run();
    run.save();
  }
  EXPECT_TRUE(fs::exists(s.output_dir / "checkpoint-4"));
  EXPECT_TRUE(fs::exists(s.output_dir / "checkpoint-6"));  // the last step's, off the schedule
  // The same command again: nothing left to do, and the finished run's outputs kept.
  s.resume_from_checkpoint = "last";
  const std::string summary = testing::read_file(s.output_dir / "train_results.json");
  const std::string finished = refusal(s);
  EXPECT_NE(finished.find("is at step 6 and this run has 6 steps: nothing is left"),
            std::string::npos)
      << finished;
  EXPECT_EQ(testing::read_file(s.output_dir / "train_results.json"), summary);
  s.args.max_steps = 8;
  {  // From checkpoint-4, the earlier run's checkpoint-6 is what "last" would pick: said.
    RunSettings from4 = s;
    from4.resume_from_checkpoint = (s.output_dir / "checkpoint-4").string();
    Recorder heard;
    TrainingRun run(*comm_, from4, &heard);
    EXPECT_TRUE(heard.noted("holds a later checkpoint of an earlier run (checkpoint-6)"));
  }
  Recorder second;
  TrainingRun resumed(*comm_, s, &second);
  EXPECT_EQ(resumed.first_step(), 6);
  resumed.run(nullptr, &second);
  resumed.save(&second);
  ASSERT_EQ(second.losses.size(), 2u);
  for (std::int64_t step = 7; step <= 8; ++step)
    EXPECT_EQ(second.losses.at(step), straight.losses.at(step)) << "step " << step;
  EXPECT_TRUE(fs::exists(s.output_dir / "checkpoint-8"));
}

TEST_F(TrainingRunTest, ResumingIntoAnotherRunIsRefusedNamingTheSetting) {
  RunSettings s = settings("run");
  s.args.max_steps = 2;
  s.args.save_strategy = "steps";
  s.args.save_steps = 1;
  {
    TrainingRun run(*comm_, s);
    run.run();
    run.save();
  }
  s.resume_from_checkpoint = (s.output_dir / "checkpoint-1").string();
  s.args.learning_rate = 1e-3;
  const std::string seed = std::to_string(s.args.seed);
  s.args.seed += 1;
  // Each differing setting, and what sets it: its flags, or the argument that continues it.
  const std::string message = refusal(s);
  EXPECT_NE(message.find("schedule: checkpoint constant, lr 0.002000"), std::string::npos)
      << message;
  EXPECT_NE(message.find("now constant, lr 0.001000"), std::string::npos) << message;
  EXPECT_NE(message.find("(set by --lr_scheduler_type, --learning_rate,"), std::string::npos)
      << message;
  EXPECT_NE(message.find("seed: checkpoint " + seed + ", now " + std::to_string(s.args.seed) +
                         " (pass --seed " + seed + ")"),
            std::string::npos)
      << message;
}

// Settings the signature gained later: whether the prompt is trained on, and a DeepSpeed
// scheduler's type and explicit parameters.
TEST_F(TrainingRunTest, ResumingRefusesOtherPromptMaskingOrDeepSpeedWarmup) {
  const auto scheduler = [&](const std::string& type, int warmup_steps) {
    const fs::path path = temp_ / (type + std::to_string(warmup_steps) + ".json");
    std::ofstream(path) << R"({"scheduler": {"type": ")" << type
                        << R"(", "params": {"warmup_min_lr": 0, "warmup_max_lr": 0.002, )"
                        << R"("warmup_num_steps": )" << warmup_steps << "}}}";
    return path;
  };
  RunSettings s = settings("run");
  s.args.max_steps = 2;
  s.args.save_strategy = "steps";
  s.args.save_steps = 1;
  s.deepspeed_config = scheduler("WarmupLR", 2);
  {
    TrainingRun run(*comm_, s);
    run.run();
    run.save();
  }
  s.resume_from_checkpoint = (s.output_dir / "checkpoint-1").string();
  EXPECT_NO_THROW(TrainingRun(*comm_, s)) << "the same settings resume";
  // The scheduler's type alone.
  s.deepspeed_config = scheduler("WarmupDecayLR", 2);
  const std::string type_changed = refusal(s);
  EXPECT_NE(type_changed.find("ds_scheduler: checkpoint WarmupLR, warmup_min_lr "),
            std::string::npos)
      << type_changed;
  EXPECT_NE(type_changed.find("now WarmupDecayLR, warmup_min_lr "), std::string::npos)
      << type_changed;
  s.data.tokenize.train_on_inputs = true;
  s.deepspeed_config = scheduler("WarmupLR", 3);
  const std::string both = refusal(s);
  EXPECT_NE(both.find("train_on_inputs: checkpoint false, now true (set by --train_on_inputs"),
            std::string::npos)
      << both;
  EXPECT_NE(both.find("warmup_num_steps 2, warmup_min_ratio auto"), std::string::npos) << both;
  EXPECT_NE(both.find("now WarmupLR, warmup_min_lr 0.000000, warmup_max_lr 0.002000, "
                      "warmup_num_steps 3, warmup_min_ratio auto, cos_min_ratio auto, "
                      "warmup log (set by the --deepspeed file's scheduler type and params)"),
            std::string::npos)
      << both;
}

TEST_F(TrainingRunTest, RefusalsLeaveTheOutputDirectoryAlone) {
  RunSettings s = settings("taken");
  fs::create_directories(s.output_dir);
  std::ofstream(s.output_dir / "notes.txt") << "keep";
  EXPECT_THROW(TrainingRun(*comm_, s), UsageError);
  s.overwrite_output_dir = true;
  EXPECT_THROW(TrainingRun(*comm_, s), UsageError);  // files zerolora did not write
  EXPECT_TRUE(fs::exists(s.output_dir / "notes.txt"));
  RunSettings bad = settings("bad");
  bad.args.residual_dtype = "bf16";  // needs --bf16
  EXPECT_THROW(TrainingRun(*comm_, bad), UsageError);
  EXPECT_FALSE(fs::exists(bad.output_dir));
  bad = settings("bad");
  bad.model_dir = temp_ / "nowhere";
  EXPECT_THROW(TrainingRun(*comm_, bad), IoError);
  EXPECT_FALSE(fs::exists(bad.output_dir));
}

}  // namespace
}  // namespace zerolora
