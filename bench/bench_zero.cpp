// ZeRO-3 benchmark, one process per rank under mpirun:
//   bench_zero --write-checkpoint DIR       writes a random ~430 MB bf16 Llama checkpoint
//   mpirun -np W bench_zero --model DIR     loads each rank's shard, trains a few LoRA steps
//   mpirun -np W bench_zero --llama2-7b-2l  the benchmarks' Llama-2-7B-shaped 2-layer stack,
//                                           each rank generating only its shard of random weights
//   mpirun -np W bench_zero --shape 70b --layers 4 --batch 10 --seq 2048 --device cuda
//                                           another shape (bench_util.hpp), on a GPU: the shards
//                                           in its memory, gathered over NCCL or staged through
//                                           the host (--ddp_backend), B sequences per rank
// Prints, per rank, key=value lines: shard bytes, peak RSS after loading and after training,
// and the step time split into compute, exposed communication (time spent waiting for a
// collective) and overlapped communication (collective time hidden behind compute).
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "core/precision.hpp"
#include "core/rng.hpp"
#include "io/safetensors.hpp"
#include "model/llama_weights.hpp"
#include "train/lora_trainer.hpp"
#include "zero3/run_device.hpp"
#include "zero3/sharded_weights.hpp"

namespace zerolora::bench {
namespace {

LlamaConfig bench_config() {
  LlamaConfig c;
  c.hidden_size = 1024;
  c.intermediate_size = 2816;
  c.num_layers = 12;
  c.num_heads = 16;
  c.num_kv_heads = 16;
  c.head_dim = 64;
  c.vocab_size = 32000;
  c.rms_norm_eps = 1e-5;
  c.torch_dtype = "bfloat16";
  return c;
}

void write_checkpoint(const std::filesystem::path& dir) {
  const LlamaConfig c = bench_config();
  Runtime rt(0);
  const auto weights = random_llama_weights<bf16>(rt, c, 1);
  std::filesystem::create_directories(dir);
  SafetensorsWriter writer;
  for (const auto& e : parameter_table(c)) {
    auto& w = const_cast<LlamaWeights<bf16>&>(weights);
    const bf16* data = w.unit_data(e) + e.offset;
    writer.add<bf16>(e.name, DType::kBF16, e.shape,
                     std::span<const bf16>(data, static_cast<std::size_t>(e.numel())));
  }
  writer.set_metadata("format", "pt");
  writer.write(dir / "model.safetensors");
  FILE* f = std::fopen((dir / "config.json").c_str(), "w");
  std::fprintf(
      f,
      "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": "
      "%lld, "
      "\"intermediate_size\": %lld, \"num_hidden_layers\": %lld, \"num_attention_heads\": %lld, "
      "\"num_key_value_heads\": %lld, \"vocab_size\": %lld, \"rms_norm_eps\": 1e-5, "
      "\"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\"}\n",
      static_cast<long long>(c.hidden_size), static_cast<long long>(c.intermediate_size),
      static_cast<long long>(c.num_layers), static_cast<long long>(c.num_heads),
      static_cast<long long>(c.num_kv_heads), static_cast<long long>(c.vocab_size));
  std::fclose(f);
  std::printf(
      "wrote %s (%.1f MiB)\n", dir.c_str(),
      static_cast<double>(std::filesystem::file_size(dir / "model.safetensors")) / (1 << 20));
}

}  // namespace
}  // namespace zerolora::bench

// Errors are left to std::terminate (the message, then an abort): a rank that returned after
// an error would finalize MPI while the others wait in a collective, where an abort makes
// mpirun end them all.
int main(int argc, char** argv) {
  using namespace zerolora;
  using namespace zerolora::bench;
  std::string model, write_dir, shape, device = "cpu", ddp_backend = "auto";
  Index layers = 2, batch = 1;
  Recompute recompute = Recompute::kFull;
  int steps = 3, threads = 1, prefetch = 1, lora_rank = 4;
  Index seq = 512, threshold = TrainerOptions{}.persistence_threshold;
  std::string lora_targets = "q_proj,k_proj,v_proj,o_proj";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--llama2-7b-2l") {
      shape = "7b";
      layers = 2;
      continue;
    }
    if (arg == "--selective") {
      recompute = Recompute::kSelective;
      continue;
    }
    const std::string value = i + 1 < argc ? argv[++i] : "";
    if (arg == "--model")
      model = value;
    else if (arg == "--write-checkpoint")
      write_dir = value;
    else if (arg == "--steps")
      steps = std::stoi(value);
    else if (arg == "--seq")
      seq = std::stoll(value);
    else if (arg == "--threads")
      threads = std::stoi(value);
    else if (arg == "--prefetch")
      prefetch = std::stoi(value);
    else if (arg == "--lora-rank")
      lora_rank = std::stoi(value);
    else if (arg == "--lora-targets")
      lora_targets = value;
    else if (arg == "--threshold")
      threshold = std::stoll(value);
    else if (arg == "--shape")
      shape = value;
    else if (arg == "--layers")
      layers = std::stoll(value);
    else if (arg == "--batch")
      batch = std::stoll(value);
    else if (arg == "--device")
      device = value;
    else if (arg == "--ddp_backend")
      ddp_backend = value;
    else {
      std::fprintf(stderr,
                   "usage: %s --write-checkpoint DIR | --model DIR | --llama2-7b-2l | --shape "
                   "7b|70b|llama3-8b [--layers N] [--batch B] [--selective] [--steps N] [--seq L] "
                   "[--threads T] [--prefetch D] [--lora-rank R] "
                   "[--lora-targets q_proj,...|all-linear] [--threshold N] [--device cpu|cuda] "
                   "[--ddp_backend auto|nccl|mpi]\n",
                   argv[0]);
      return 2;
    }
  }
  const std::optional<LlamaConfig> shaped =
      shape.empty() ? std::nullopt : bench_shape(shape, layers);
  if (!shape.empty() && !shaped) {
    std::fprintf(stderr, "--shape: 7b, 70b or llama3-8b, not %s\n", shape.c_str());
    return 2;
  }
  if (!write_dir.empty()) {
    write_checkpoint(write_dir);
    return 0;
  }
  if (model.empty() && !shaped) {
    std::fprintf(
        stderr, "give --model DIR (made with --write-checkpoint DIR), --llama2-7b-2l or --shape\n");
    return 2;
  }
  auto comm = make_communicator();
  const int W = comm->size(), r = comm->rank();
  RunDevice run = open_run_device(device, parse_ddp_backend(ddp_backend), *comm);
  if (r == 0 && !run.note.empty()) std::printf("# %s\n", run.note.c_str());
  const DdpBackend backend = run.backend;
  Runtime rt(threads, std::move(run.device));
  // The store's collectives on a GPU: NCCL or staged through the host; `comm` on the CPU.
  auto on_device = make_parameter_communicator(rt.device(), backend, *comm, 600);
  Communicator& gathers = on_device ? *on_device : *comm;
  std::vector<double> figures;  // gathered to rank 0 in this order
  const std::vector<std::string> names{"shard_mib",         "rss_after_load_mib", "step_s",
                                       "compute_s",         "comm_busy_s",        "comm_exposed_s",
                                       "comm_overlapped_s", "gathered_peak_mib",  "peak_rss_mib",
                                       "peak_device_mib"};
  double load_rss = 0;
  std::size_t shard_bytes = 0;
  auto weights = [&] {
    if (shaped) {
      auto w =
          ShardedWeights<bf16>::random(rt, gathers, *shaped, 7, 0.02, ZeroOptions{prefetch, 0});
      shard_bytes = w.shard_bytes();
      return w;
    }
    const Checkpoint checkpoint(model);
    auto w = ShardedWeights<bf16>::load(rt, gathers, checkpoint, ZeroOptions{prefetch, 0});
    shard_bytes = w.shard_bytes();
    return w;
  }();
  load_rss = peak_rss_mib();

  LoraConfig lora;  // default: the seed recipe's r 4 on q, k, v, o
  lora.rank = lora_rank;
  lora.alpha = 16;
  lora.dropout = 0.05;
  lora.targets = parse_lora_targets(lora_targets);
  const LoraLayout layout(weights.config(), lora);
  std::vector<float> init(static_cast<std::size_t>(layout.size()));
  init_lora_params<float>(init, layout, 1);
  ComputeOptions compute;
  compute.recompute = recompute;
  compute.bf16_residual = true;  // as `zerolora train --bf16` (its default)
  LlamaModel<Bf16Policy> llama(rt, weights, &layout, compute);
  TrainerOptions options;
  options.persistence_threshold = threshold;
  options.micro_batch = batch;
  LoraTrainer<Bf16Policy> trainer(rt, *comm, llama, layout, options, init);
  std::vector<float>().swap(init);  // as zerolora train: the trainer keeps its part
  // Global batch of W x B sequences: B per rank.
  const Index sequences = W * batch;
  std::vector<TokenSequence> data(static_cast<std::size_t>(sequences));
  for (Index s = 0; s < sequences; ++s) {
    for (Index t = 0; t < seq; ++t) {
      const auto id =
          static_cast<std::int32_t>(mix64(static_cast<std::uint64_t>(s * seq + t)) % 32000);
      data[s].input_ids.push_back(id);
      data[s].labels.push_back(id);
    }
    data[s].segment_lengths = {static_cast<std::int32_t>(seq)};
  }
  std::vector<Index> all(static_cast<std::size_t>(sequences)), mine;
  for (Index s = 0; s < sequences; ++s) all[s] = s;
  for (Index s = 0; s < batch; ++s) mine.push_back(r * batch + s);
  const Index targets = count_targets(data, all);
  std::vector<double> step_times;
  for (int s = 0; s <= steps; ++s) {  // step 0 warms up
    if (s == 1) {
      comm->reset_stats();
      if (on_device) on_device->reset_stats();
    }
    rt.device().synchronize();
    comm->barrier();
    const double t0 = now_seconds();
    const auto stats = trainer.step(data, mine, targets, 1e-4, s);
    (void)stats;
    rt.device().synchronize();
    if (s > 0) step_times.push_back(now_seconds() - t0);
  }
  // The LoRA collectives (host) and, on a GPU, the store's gathers.
  CommStats cs = comm->stats();
  if (on_device) {
    const CommStats g = on_device->stats();
    cs.busy_seconds += g.busy_seconds;
    cs.waited_seconds += g.waited_seconds;
    cs.bytes += g.bytes;
    cs.calls += g.calls;
  }
  double step_s = 0, compute_s = 0;
  for (double t : step_times) step_s += t / steps;
  // compute_seconds includes waits for gathers inside forward/backward: take exposed time out.
  compute_s = step_s - cs.waited_seconds / steps;
  figures = {static_cast<double>(shard_bytes) / (1 << 20),
             load_rss,
             step_s,
             compute_s,
             cs.busy_seconds / steps,
             cs.waited_seconds / steps,
             (cs.busy_seconds - cs.waited_seconds) / steps,
             static_cast<double>(weights.gathered_peak_bytes()) / (1 << 20),
             peak_rss_mib(),
             static_cast<double>(rt.device().peak_allocated_bytes()) / (1 << 20)};
  std::vector<double> everyone(figures.size() * static_cast<std::size_t>(W));
  comm->all_gather(figures.data(), everyone.data(), figures.size() * sizeof(double));
  if (r == 0) {
    print_kv("world", W);
    print_kv("threads_per_rank", threads);
    print_kv("seq", static_cast<double>(seq));
    print_kv("batch_per_rank", static_cast<double>(batch));
    print_kv("device", rt.device().name());
    print_kv("gathers", gathers.name());
    print_kv("lora_params", static_cast<double>(layout.size()));
    print_kv("lora_resident_mib",
             static_cast<double>(trainer.shards().resident_elements()) * 4 / (1 << 20));
    print_kv("tokens_per_s", static_cast<double>(sequences * seq) / step_s);
    for (int q = 0; q < W; ++q)
      for (std::size_t k = 0; k < names.size(); ++k) {
        // Appended piece by piece: GCC 12 flags "w" + std::string(...) here (-Wrestrict, a
        // false positive of its inliner).
        std::string key = "w";
        key += std::to_string(W);
        key += "_rank";
        key += std::to_string(q);
        key += "_";
        key += names[k];
        print_kv(key, everyone[static_cast<std::size_t>(q) * names.size() + k]);
      }
  }
  return 0;
}
