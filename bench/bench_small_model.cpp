// Benchmark job (b): LoRA training of a small real model (stories260K-hf) on Alpaca-format
// records (the demo's instruction set unless --data names another file),
// micro-batches of 4 examples of up to 256 tokens, no packing (or, with --concat, the seed
// recipe's 10 concatenated blocks of 512): thousands of small kernels per step, so this
// measures zerolora's overheads. Real (non-padding) tokens per second, and the
// share of each kind of work. Prints key=value lines.
//   bench_small_model [--model DIR] [--data FILE] [--steps 50] [--threads 0] [--fp32]
//                     [--selective | --recompute MODE] [--concat]
// Recompute defaults to auto, as `zerolora train`.
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

#include "bench_util.hpp"
#include "comm/communicator.hpp"
#include "core/precision.hpp"
#include "data/dataset.hpp"
#include "model/llama_weights.hpp"
#include "train/lora_trainer.hpp"

namespace zerolora::bench {

template <class P>
int run(const std::filesystem::path& model_dir, const std::filesystem::path& data_file, int steps,
        int threads, Recompute recompute, bool concat) {
  Runtime rt(threads);
  const Checkpoint checkpoint(model_dir);
  const Tokenizer tokenizer(model_dir / "tokenizer.model");
  DataOptions data_options;
  data_options.train_file = data_file;
  // default: 4 examples of up to 256 tokens per micro-batch; --concat: the seed recipe's 10
  // blocks of 512 concatenated tokens
  data_options.tokenize.max_seq_length = concat ? 512 : 256;
  if (concat) data_options.packing = Packing::kConcat;
  const Index micro = concat ? 10 : 4;
  const TrainingData data = build_training_data(rt, data_options, tokenizer);
  auto weights = load_llama_weights<typename P::Weight>(rt, checkpoint);
  LoraConfig lora;  // the seed recipe's
  lora.rank = 4;
  lora.alpha = 16;
  lora.dropout = 0.05;
  const LoraLayout layout(checkpoint.config(), lora);
  std::vector<float> init(static_cast<std::size_t>(layout.size()));
  init_lora_params<float>(init, layout, 1);
  ComputeOptions compute;
  compute.recompute = recompute;
  // as `zerolora train`: a bf16 residual with --bf16 (its default), fp32 in the fp32 mode
  compute.bf16_residual = std::is_same_v<typename P::Weight, bf16>;
  LlamaModel<P> model(rt, weights, &layout, compute);
  auto comm = make_local_communicator();
  TrainerOptions options;
  options.micro_batch = micro;
  LoraTrainer<P> trainer(rt, *comm, model, layout, options, init);
  double seconds = 0;
  Index tokens = 0;
  for (int s = 0; s <= steps; ++s) {  // step 0 warms up
    std::vector<Index> batch;
    for (Index i = 0; i < micro; ++i)
      batch.push_back((s * micro + i) % static_cast<Index>(data.train.size()));
    if (s == 1) {
      rt.profiler().reset();
      rt.profiler().enable(true);
    }
    const double t0 = now_seconds();
    const auto stats = trainer.step(data.train, batch, count_targets(data.train, batch), 1e-4, s);
    if (s > 0) {
      seconds += now_seconds() - t0;
      tokens += stats.tokens;
    }
  }
  print_kv("threads", rt.threads());
  print_kv("precision", std::string(P::kName));
  print_kv("recompute", recompute_name(recompute));
  print_kv("recompute_plan", describe_recompute_plan(model.recompute_levels()));
  print_kv("steps", steps);
  print_kv("step_s", seconds / steps);
  print_kv("tokens_per_s", static_cast<double>(tokens) / seconds);
  for (int c = 0; c < Profiler::kCategories; ++c) {
    const auto category = static_cast<ProfileCategory>(c);
    print_kv("share_" + std::string(profile_category_name(category)),
             rt.profiler().seconds(category) / seconds);
  }
  print_kv("share_untracked", 1.0 - rt.profiler().total_seconds() / seconds);
  print_kv("peak_rss_mib", peak_rss_mib());
  return 0;
}

}  // namespace zerolora::bench

static int bench_main(int argc, char** argv) {
  std::filesystem::path model_dir = zerolora::bench::kDemoDir / "stories260K-hf",
                        data_file = zerolora::bench::kDemoDir / "instructions.json";
  int steps = 50, threads = 0;
  bool fp32 = false;
  zerolora::Recompute recompute = zerolora::Recompute::kAuto;
  bool concat = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--fp32")
      fp32 = true;
    else if (arg == "--selective")
      recompute = zerolora::Recompute::kSelective;
    else if (i + 1 < argc && arg == "--recompute")
      recompute = zerolora::parse_recompute(argv[++i], "--recompute");
    else if (arg == "--concat")
      concat = true;
    else if (i + 1 < argc && arg == "--model")
      model_dir = argv[++i];
    else if (i + 1 < argc && arg == "--data")
      data_file = argv[++i];
    else if (i + 1 < argc && arg == "--steps")
      steps = std::stoi(argv[++i]);
    else if (i + 1 < argc && arg == "--threads")
      threads = std::stoi(argv[++i]);
    else {
      std::fprintf(
          stderr,
          "usage: %s [--model DIR] [--data FILE] [--steps N] [--threads N] [--fp32] [--selective] "
          "[--recompute full|attention|attention_mlp|selective|none|auto] [--concat]\n",
          argv[0]);
      return 2;
    }
  }
  return fp32 ? zerolora::bench::run<zerolora::Fp32Policy>(model_dir, data_file, steps, threads,
                                                           recompute, concat)
              : zerolora::bench::run<zerolora::Bf16Policy>(model_dir, data_file, steps, threads,
                                                           recompute, concat);
}

int main(int argc, char** argv) {
  return zerolora::bench::report_errors("bench_small_model",
                                        [&] { return bench_main(argc, argv); });
}
