// Micro-benchmark of the attention kernels alone (forward + backward), for tuning: the best of
// N repetitions, so a noisy machine still gives comparable numbers. key=value lines.
//   bench_attention [--segments 10] [--length 512] [--heads 8] [--kv 4] [--head_dim 8]
//                   [--kernel auto|tiled|direct] [--reps 20] [--threads 0]
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "core/bf16.hpp"
#include "ops/attention.hpp"

static int bench_main(int argc, char** argv) {
  using namespace zerolora;
  using namespace zerolora::bench;
  Index segments = 10, length = 512, heads = 8, kv = 4, hd = 8;
  int reps = 20, threads = 0;
  std::string kernel = "auto";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i], value = argv[i + 1];
    if (arg == "--segments")
      segments = std::stoll(value);
    else if (arg == "--length")
      length = std::stoll(value);
    else if (arg == "--heads")
      heads = std::stoll(value);
    else if (arg == "--kv")
      kv = std::stoll(value);
    else if (arg == "--head_dim")
      hd = std::stoll(value);
    else if (arg == "--kernel")
      kernel = value;
    else if (arg == "--reps")
      reps = std::stoi(value);
    else if (arg == "--threads")
      threads = std::stoi(value);
    else {
      std::fprintf(stderr, "unknown option %s\n", arg.c_str());
      return 2;
    }
  }
  Runtime rt(threads);
  const AttentionShape shape{heads, kv, hd};
  const Index M = segments * length, W3 = shape.qkv_stride(), Qd = heads * hd;
  std::vector<Segment> segs;
  for (Index s = 0; s < segments; ++s) segs.push_back({s * length, length});
  std::vector<float> qkv(static_cast<std::size_t>(M * W3)), out(static_cast<std::size_t>(M * Qd));
  std::vector<float> lse(static_cast<std::size_t>(heads * M)), dout(out.size()), dqkv(qkv.size());
  for (std::size_t i = 0; i < qkv.size(); ++i)
    qkv[i] = 0.5f * std::sin(0.37f * static_cast<float>(i));
  for (std::size_t i = 0; i < dout.size(); ++i)
    dout[i] = 0.01f * std::cos(0.11f * static_cast<float>(i));
  AttentionOptions options;
  options.kernel = kernel == "tiled"    ? AttentionOptions::Kernel::kTiled
                   : kernel == "direct" ? AttentionOptions::Kernel::kDirect
                                        : AttentionOptions::Kernel::kAuto;
  AttentionWorkspace ws;
  double best_forward = 1e30, best_backward = 1e30;
  for (int r = 0; r <= reps; ++r) {
    const double t0 = now_seconds();
    attention_forward<float, bf16>(rt, out.data(), lse.data(), qkv.data(), segs, M, shape, options,
                                   ws);
    const double t1 = now_seconds();
    attention_backward<float, bf16>(rt, dqkv.data(), dout.data(), qkv.data(), out.data(),
                                    lse.data(), segs, M, shape, options, ws);
    const double t2 = now_seconds();
    if (r > 0) {
      best_forward = std::min(best_forward, t1 - t0);
      best_backward = std::min(best_backward, t2 - t1);
    }
  }
  // causal: each of the L queries of a segment sees on average (L + 1) / 2 keys
  const double pairs =
      static_cast<double>(segments) * static_cast<double>(heads) * length * (length + 1) / 2.0;
  print_kv("threads", rt.threads());
  print_kv("forward_ms", best_forward * 1e3);
  print_kv("backward_ms", best_backward * 1e3);
  print_kv("forward_gflops", 4.0 * pairs * hd / best_forward / 1e9);     // QK^T and PV
  print_kv("backward_gflops", 10.0 * pairs * hd / best_backward / 1e9);  // QK^T, dP, dV, dQ, dK
  return 0;
}

int main(int argc, char** argv) {
  return zerolora::bench::report_errors("bench_attention", [&] { return bench_main(argc, argv); });
}
