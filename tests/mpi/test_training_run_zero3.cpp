// The training run through the library (train/training_run.hpp) on W ranks gives what one
// process gives: every step's loss, the evaluation and the adapter, on the demo's real tiny
// model in fp32 with dropout on and every LoRA tensor partitioned (ZeRO-3 for LoRA too). The
// global batch of 12 is split 12/W per rank; the single process runs the same micro-batches
// one after another (12/W x W accumulation), so only the order of the sums across ranks differs.
#include <gtest/gtest.h>

#include <algorithm>

#include "io/safetensors.hpp"
#include "io/tensor_read.hpp"
#include "mpi_env.hpp"
#include "test_util.hpp"
#include "tolerances.hpp"
#include "train/training_run.hpp"

namespace zerolora {
namespace {

namespace fs = std::filesystem;
using testing::MpiEnvironment;

struct Losses : RunObserver {
  void step(const StepProgress& p) override { per_step.push_back(p.loss); }
  void metrics(const nlohmann::ordered_json& record) override {
    if (record.contains("eval_loss")) eval_loss = record["eval_loss"].get<double>();
  }
  std::vector<double> per_step;
  double eval_loss = 0;
};

RunSettings settings(const fs::path& output, Index micro, Index accumulation) {
  RunSettings s;
  s.model_dir = testing::stories_model_dir();
  s.output_dir = output;
  s.threads = 1;
  s.data.train_file = testing::demo_dir() / "instructions.json";
  s.data.tokenize.max_seq_length = 192;
  s.data.validation_split_percentage = 1;
  s.args.bf16 = false;
  s.args.max_steps = 4;
  s.args.per_device_train_batch_size = micro;
  s.args.gradient_accumulation_steps = accumulation;
  s.args.learning_rate = 3e-3;
  s.args.lora_rank = 4;
  s.args.lora_dropout = 0.1;
  s.args.lora_target_modules = {"all-linear"};
  s.args.persistence_threshold = 0;  // every LoRA tensor partitioned
  s.args.save_strategy = "no";
  s.args.eval_strategy = "steps";
  s.args.eval_steps = 4;
  return s;
}

std::vector<float> adapter(const fs::path& dir) {
  const SafetensorsFile file(dir / "adapter_model.safetensors");
  std::vector<const TensorInfo*> tensors;  // by name: the same order for both adapters
  for (const auto& t : file.tensors()) tensors.push_back(&t);
  std::sort(tensors.begin(), tensors.end(), [](auto* a, auto* b) { return a->name < b->name; });
  std::vector<float> all;
  for (const TensorInfo* t : tensors) {
    const auto values = read_float_tensor<float>(file, *t);
    all.insert(all.end(), values.begin(), values.end());
  }
  return all;
}

// A directory every rank sees: rank 0's, broadcast.
fs::path shared_directory(Communicator& comm, const fs::path& mine) {
  std::string path = mine.string();
  std::uint64_t length = path.size();
  comm.broadcast(&length, sizeof(length), 0);
  path.resize(length);
  comm.broadcast(path.data(), length, 0);
  return path;
}

TEST(TrainingRunZero3, EqualsTheSingleProcessRun) {
  Communicator& comm = MpiEnvironment::comm();
  const Index W = comm.size();
  if (12 % W != 0) GTEST_SKIP() << "a global batch of 12 does not split over " << W << " ranks";
  testing::TempDir temp;
  const fs::path dir = shared_directory(comm, temp.path());
  Losses alone, together;
  std::int64_t reference_ran = 1;
  if (comm.rank() == 0) {  // the reference: this process alone
    try {
      auto local = make_local_communicator();
      TrainingRun run(*local, settings(dir / "alone", 12 / W, W), &alone);
      run.run(nullptr, &alone);
      run.save(&alone);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "the single-process run failed: " << e.what();
      reference_ran = 0;
    }
  }
  comm.broadcast(&reference_ran, sizeof(reference_ran), 0);  // the other ranks must not wait
  if (!reference_ran) return;
  TrainingRun run(comm, settings(dir / "together", 12 / W, 1), &together);
  run.run(nullptr, &together);
  const auto summary = run.save(&together);
  EXPECT_EQ(summary["world_size"].get<Index>(), W);
  if (comm.rank() != 0) return;
  ASSERT_EQ(together.per_step.size(), alone.per_step.size());
  for (std::size_t s = 0; s < alone.per_step.size(); ++s)
    EXPECT_NEAR(together.per_step[s], alone.per_step[s],
                tolerance::kWorldSize.losses * alone.per_step[s])
        << "step " << s + 1 << ", " << W << " rank(s)";
  EXPECT_NEAR(together.eval_loss, alone.eval_loss, tolerance::kWorldSize.losses * alone.eval_loss);
  EXPECT_LT(testing::max_rel_error(adapter(dir / "together"), adapter(dir / "alone")),
            tolerance::kWorldSize.adapter);
}

}  // namespace
}  // namespace zerolora
