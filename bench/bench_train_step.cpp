// Benchmark: one full LoRA training step (forward + backward + AdamW, recompute on by default) of a
// Llama-2-7B-shaped stack (or Llama-2-70B's layer shape: --shape 70b; Llama-3-8B's: --shape
// llama3-8b) with random bf16 weights,
// micro-batch --batch sequences of each --seq length (separate segments), against the device's
// bf16 GEMM peak measured in the same run (oneDNN's on the CPU, the CUDA backend's on a GPU,
// where MFU against the nominal 989 TFLOP/s of an H100/H200 is printed too). Prints key=value
// lines; see BENCHMARKS.md.
//   bench_train_step [--seq 512,2048] [--layers 2] [--batch 1] [--steps 3] [--threads 0]
//                    [--device cpu|cuda] [--shape 7b|70b|llama3-8b|tiny] [--no-recompute |
//                    --selective] [--attention fused|reference]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "core/buffer.hpp"
#include "core/precision.hpp"
#include "model/backend.hpp"
#include "model/flops.hpp"
#include "model/llama_model.hpp"
#include "train/adamw.hpp"
#include "zero3/whole_model.hpp"

namespace zerolora::bench {
namespace {

std::vector<Index> parse_list(const std::string& text) {
  std::vector<Index> values;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) values.push_back(std::stoll(item));
  return values;
}

// Every random weight's standard deviation (Transformers' initializer_range for Llama).
constexpr double kWeightStd = 0.02;

}  // namespace
}  // namespace zerolora::bench

static int bench_main(int argc, char** argv) {
  using namespace zerolora;
  using namespace zerolora::bench;
  std::vector<Index> seqs{512, 2048};
  Index layers = 2, batch_size = 1;
  int steps = 3, threads = 0;
  std::string device = "cpu", shape = "7b";
  Recompute recompute = Recompute::kFull;
  double budget_mib = -1;      // auto's budget; negative: the default (zerolora train's)
  double given_peak = 0;       // --peak_gflops: MFU's divisor without measuring it
  AttentionOptions attention;  // --attention reference: the GPU's own kernel instead of cuDNN's
  std::string targets = "q_proj,k_proj,v_proj,o_proj";  // the seed's
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&] {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return std::string(argv[++i]);
    };
    if (arg == "--seq")
      seqs = parse_list(value());
    else if (arg == "--layers")
      layers = std::stoll(value());
    else if (arg == "--steps")
      steps = std::stoi(value());
    else if (arg == "--threads")
      threads = std::stoi(value());
    else if (arg == "--batch")
      batch_size = std::stoll(value());
    else if (arg == "--device")
      device = value();
    else if (arg == "--shape")
      shape = value();
    else if (arg == "--no-recompute")
      recompute = Recompute::kNone;
    else if (arg == "--selective")
      recompute = Recompute::kSelective;
    else if (arg == "--recompute")
      recompute = parse_recompute(value(), "--recompute");
    else if (arg == "--lora_target_modules")
      targets = value();
    else if (arg == "--recompute_budget_mib")
      budget_mib = std::stod(value());
    else if (arg == "--peak_gflops")
      given_peak = std::stod(value());
    else if (arg == "--attention") {
      const std::string kind = value();
      if (kind != "fused" && kind != "reference") {
        std::fprintf(stderr, "--attention: fused or reference, not %s\n", kind.c_str());
        return 2;
      }
      attention.fused = kind == "fused";
    } else {
      std::fprintf(
          stderr,
          "usage: %s [--seq 512,2048] [--layers 2] [--batch 1] [--steps 3] [--threads N] "
          "[--device cpu|cuda] [--shape 7b|70b|llama3-8b|tiny] [--no-recompute | --selective | "
          "--recompute full|attention|attention_mlp|selective|none|auto "
          "[--recompute_budget_mib M]] [--peak_gflops G (not measured)] "
          "[--attention fused|reference] [--lora_target_modules q_proj,...|all-linear]\n",
          argv[0]);
      return 2;
    }
  }
  Runtime rt(threads, make_device(device));
  const bool gpu = rt.device().kind() != DeviceKind::kCpu;
  print_kv("threads", rt.threads());
  print_kv("device", rt.device().name());
  // The best of 10 GEMMs (2048^3 on the CPU, 8192^3 on a GPU): this VM's speed drifts by ~10%
  // between runs, and the peak is what the hardware can do, so MFU errs on the low side.
  const double peak = given_peak > 0
                          ? given_peak
                          : measure_device_gemm_gflops<Bf16Policy>(rt, gpu ? 8192 : 2048, 10);
  print_kv("gemm_bf16_peak_gflops", peak);

  const std::optional<LlamaConfig> shaped = bench_shape(shape, layers);
  if (!shaped) {
    std::fprintf(stderr, "--shape: 7b, 70b, llama3-8b or tiny, not %s\n", shape.c_str());
    return 2;
  }
  const LlamaConfig config = *shaped;
  auto weights = random_whole_model<bf16>(rt, config, 7, kWeightStd);  // a GPU's in its memory
  LoraConfig lora;  // the seed recipe: r 4, alpha 16, dropout 0.05 on q, k, v, o (by default)
  lora.rank = 4;
  lora.alpha = 16;
  lora.dropout = 0.05;
  lora.targets = parse_lora_targets(targets);
  const LoraLayout layout(config, lora);
  std::vector<float> params(static_cast<std::size_t>(layout.size())), grads(params.size());
  init_lora_params<float>(params, layout, 1);
  AdamW<float> optimizer(layout.size(), AdamWConfig{});
  ComputeOptions options;
  options.recompute = recompute;
  options.recompute_budget_bytes = recompute_budget_from_mib(budget_mib);
  options.bf16_residual = true;  // as `zerolora train --bf16` (its default)
  options.attention = attention;
  LlamaModel<Bf16Policy> model(rt, *weights, &layout, options);
  print_kv("model", "llama2-" + shape + "-shape layers=" + std::to_string(layers) +
                        " lora_r=4 targets=" + targets + " batch=" + std::to_string(batch_size));
  print_kv("recompute", recompute_name(recompute));
  if (gpu) print_kv("attention", attention.fused ? "fused" : "reference");

  for (Index seq : seqs) {
    Batch batch;
    std::vector<std::int32_t> ids(static_cast<std::size_t>(seq));
    for (Index t = 0; t < seq; ++t)
      ids[t] = static_cast<std::int32_t>((t * 7919 + 13) % config.vocab_size);
    for (Index b = 0; b < batch_size; ++b) batch.add_sequence(ids, ids, b);
    const double count = static_cast<double>(batch.label_count());
    std::vector<double> times;
    double loss = 0;
    // The final norm gives rows of RMS 1, so with weights of std s the logits are near-Gaussian
    // with variance s^2 D, and the loss (a log-sum-exp of V of them minus one) is near
    // ln(V) + s^2 D / 2: 11.2 for the 7B shape, 12.0 for the 70B one.
    const double expected_loss =
        std::log(static_cast<double>(config.vocab_size)) +
        kWeightStd * kWeightStd * static_cast<double>(config.hidden_size) / 2;
    rt.profiler().enable(true);
    // On a GPU, events around each op time it on the GPU's clock (read after each step).
    const std::unique_ptr<DeviceClock> clock = rt.device().make_clock();
    rt.profiler().set_device_clock(clock.get());
    for (int s = 0; s <= steps; ++s) {  // step 0 is warm-up (primitive creation, page faults)
      const double t0 = now_seconds();
      std::fill(grads.begin(), grads.end(), 0.0f);
      loss = model.forward_backward(batch, params, grads, 1.0 / count,
                                    {1, static_cast<std::uint64_t>(s)}) /
             count;
      const double norm = clip_grad_norm<float>(rt, grads, 1.0);
      // Every step validated (a bad backward shows as a bad gradient norm, or a bad loss in the
      // next step): which step and where the forward went non-finite, for the device check.
      if (!std::isfinite(loss) || std::abs(loss - expected_loss) > 1.0 || !std::isfinite(norm)) {
        std::fprintf(
            stderr,
            "invalid step %d at seq %lld: loss %f (expected about %.2f), gradient norm "
            "%g; forward first non-finite at: %s\n",
            s, static_cast<long long>(seq), loss, expected_loss, norm,
            model.nonfinite_site() < 0
                ? "nowhere"
                : describe_nonfinite_site(model.nonfinite_site(), config.num_layers).c_str());
        rt.profiler().set_device_clock(nullptr);  // before the clock goes
        return 1;
      }
      optimizer.step(rt, params, grads, 1e-4);
      rt.device().synchronize();  // the step ends when the device's work does
      if (s > 0) times.push_back(now_seconds() - t0);
      if (s == 0) rt.profiler().reset();
      rt.profiler().collect_device();
    }
    rt.profiler().set_device_clock(nullptr);
    const double step_s = median(times);
    const double tokens_per_s = static_cast<double>(seq * batch_size) / step_s;
    const double flops = model_flops_per_token(config, layout, seq);
    const std::string p = "seq" + std::to_string(seq) + "_";
    print_kv(p + "loss", loss);
    print_kv(p + "step_s", step_s);
    print_kv(p + "tokens_per_s", tokens_per_s);
    print_kv(p + "model_flops_per_token", flops);
    print_kv(p + "achieved_gflops", flops * tokens_per_s / 1e9);
    print_kv(p + "mfu", flops * tokens_per_s / 1e9 / peak);
    if (gpu) {
      print_kv(p + "mfu_vs_989_tflops", flops * tokens_per_s / 989e3 / 1e9);
      print_kv(p + "peak_device_mib",
               static_cast<double>(rt.device().peak_allocated_bytes()) / (1024.0 * 1024.0));
    }
    print_kv(p + "peak_rss_mib", peak_rss_mib());
    print_kv(p + "recompute_plan", describe_recompute_plan(model.recompute_levels()));
    // Which attention ran (on a GPU: cuDNN's, or the reference kernel and why), for the check.
    for (const std::string& note : model.take_kernel_notes()) print_kv(p + "note", note);
    // Share of the step per kind of work (timed steps only): on a GPU, the GPU's time in each
    // kind's kernels (the host only launches them), the rest of the step the GPU spent idle
    // or in copies outside the ops.
    double total = 0;  // the profiler saw every timed step, so divide by their sum, not the median
    for (double t : times) total += t;
    const Profiler& profiler = rt.profiler();
    for (int c = 0; c < Profiler::kCategories; ++c) {
      const auto category = static_cast<ProfileCategory>(c);
      print_kv(p + "share_" + std::string(profile_category_name(category)),
               (gpu ? profiler.device_seconds(category) : profiler.seconds(category)) / total);
    }
    print_kv(p + (gpu ? "share_idle_or_untracked" : "share_untracked"),
             1.0 - (gpu ? profiler.total_device_seconds() : profiler.total_seconds()) / total);
    // The time per step of the work outside the decoder layers (embedding, final norm, lm_head,
    // loss), which a model of more layers runs once too: a projection to more layers scales
    // the rest (gpu-check.sh's seed-job projection).
    const StepPart once = StepPart::kOncePerStep;
    print_kv(p + "once_per_step_s", (gpu ? profiler.device_seconds(once) : profiler.seconds(once)) /
                                        static_cast<double>(times.size()));
  }
  return 0;
}

int main(int argc, char** argv) {
  return zerolora::bench::report_errors("bench_train_step", [&] { return bench_main(argc, argv); });
}
