// Benchmark: each memory-bound op of a training step alone, at a model's shape, against the
// device's own copy bandwidth (a device-to-device copy, timed the same way). For every op: its
// time, the bytes it must move at the least (each input read once, each output written once),
// the bandwidth that makes, and that bandwidth as a fraction of the copy's. An op far below 1 is
// bound by something else than memory (arithmetic, latency, launch): where a step's share
// (bench_train_step's seq*_share_*) says an op costs more than its bytes, this says which. The
// LoRA branch runs with dropout off and on (the difference is the mask's hashing), and its
// contraction alone too (the forward less it is the expansion); the q, k and v branches as the
// layer runs them (on a GPU the forward branch by branch, the backward as one group) and the
// backward one by one.
// Attention, compute-bound, is reported apart: its forward and backward on segments of --seq
// tokens (causal), their FLOPs per second, and the time of the attention kernels alone (on a
// GPU, cuDNN's, without the copies into and out of its bf16 layout, timed as convert); then the
// same on a GPU for the backend's own attention kernel (`attention_reference_*`: what serves
// fp32 mode and the shapes cuDNN refuses).
//   bench_kernels [--device cpu|cuda] [--shape 7b|70b|tiny] [--tokens 8192] [--seq 2048]
//                 [--repeats 20] [--threads 0] [--ops all|attention]
// Prints key=value lines (`<op>_us`, `<op>_gbps`, `<op>_of_copy`; attention `_us`, `_tflops`,
// `_kernel_us`, `_kernel_tflops`); see BENCHMARKS.md.
#include <algorithm>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "bench_util.hpp"
#include "core/bf16.hpp"
#include "core/device.hpp"
#include "core/precision.hpp"
#include "core/profiler.hpp"
#include "core/rng.hpp"
#include "model/backend.hpp"
#include "ops/kernels.hpp"
#include "ops/rope.hpp"

namespace zerolora::bench {
namespace {

template <class T>
DeviceBuffer<T> random_buffer(Device& device, Index n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<T> host(static_cast<std::size_t>(n));
  for (auto& v : host) {
    if constexpr (std::is_same_v<T, bf16>)
      v = to_bf16(dist(gen));
    else
      v = static_cast<T>(dist(gen));
  }
  DeviceBuffer<T> buffer;
  upload<T>(device, buffer, host);
  return buffer;
}

// Seconds per call: one call to warm up, then `repeats` back to back, the device's work waited
// for before and after.
double seconds_per_call(Device& device, int repeats, const std::function<void()>& op) {
  op();
  device.synchronize();
  const double start = now_seconds();
  for (int r = 0; r < repeats; ++r) op();
  device.synchronize();
  return (now_seconds() - start) / repeats;
}

}  // namespace
}  // namespace zerolora::bench

static int bench_main(int argc, char** argv) {
  using namespace zerolora;
  using namespace zerolora::bench;
  std::string device_spec = "cpu", shape = "7b", ops = "all";
  Index M = 8192, seq = 2048;
  int repeats = 20, threads = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "%s needs a value\n", arg.c_str());
      return 2;
    }
    const std::string value = argv[++i];
    if (arg == "--device")
      device_spec = value;
    else if (arg == "--shape")
      shape = value;
    else if (arg == "--tokens")
      M = std::stoll(value);
    else if (arg == "--seq")
      seq = std::stoll(value);
    else if (arg == "--repeats")
      repeats = std::stoi(value);
    else if (arg == "--threads")
      threads = std::stoi(value);
    else if (arg == "--ops" && (value == "all" || value == "attention"))
      ops = value;
    else {
      std::fprintf(stderr,
                   "usage: %s [--device cpu|cuda] [--shape 7b|70b|tiny] [--tokens 8192] "
                   "[--seq 2048] [--repeats 20] [--threads N] [--ops all|attention]\n",
                   argv[0]);
      return 2;
    }
  }
  const std::optional<LlamaConfig> shaped = bench_shape(shape, 1);
  if (!shaped || shape == "llama3-8b") {
    std::fprintf(stderr, "--shape: 7b, 70b or tiny, not %s\n", shape.c_str());
    return 2;
  }
  if (M < 1 || seq < 1 || repeats < 1) {
    std::fprintf(stderr, "--tokens, --seq and --repeats must be at least 1\n");
    return 2;
  }
  const LlamaConfig c = *shaped;
  Runtime rt(threads, make_device(device_spec));
  Device& dev = rt.device();
  std::unique_ptr<Kernels<Bf16Policy>> k = make_kernels<Bf16Policy>(rt);
  const Index D = c.hidden_size, I = c.intermediate_size, Qd = c.q_dim(), KVd = c.kv_dim();
  const Index W3 = Qd + 2 * KVd;
  print_kv("device", dev.name());
  print_kv("shape", shape + " hidden=" + std::to_string(D) + " intermediate=" + std::to_string(I) +
                        " heads=" + std::to_string(c.num_heads) +
                        " kv_heads=" + std::to_string(c.num_kv_heads));
  print_kv("tokens", static_cast<double>(M));

  auto qkv = random_buffer<float>(dev, M * W3, 6);
  // Positions within segments of `seq` tokens, and RoPE's table for them.
  std::vector<std::int32_t> positions_host(static_cast<std::size_t>(M));
  for (Index i = 0; i < M; ++i) positions_host[i] = static_cast<std::int32_t>(i % seq);
  DeviceBuffer<std::int32_t> positions;
  upload<std::int32_t>(dev, positions, positions_host);
  RopeTable rope(c.rope, c.head_dim);
  rope.ensure(seq);

  if (ops == "all") {  // the memory-bound ops (their buffers made only here)
    auto x = random_buffer<float>(dev, M * D, 1), dx = random_buffer<float>(dev, M * D, 2);
    auto h = random_buffer<float>(dev, M * D, 3), rstd = random_buffer<float>(dev, M, 4);
    auto norm_w = random_buffer<bf16>(dev, D, 5);
    auto gate_up = random_buffer<float>(dev, M * 2 * I, 7, 4.0f);
    auto act = random_buffer<float>(dev, M * I, 8), d_act = random_buffer<float>(dev, M * I, 9);
    auto d_gate_up = random_buffer<float>(dev, M * 2 * I, 10);
    DeviceBuffer<bf16> rounded(dev, static_cast<std::size_t>(M * 2 * I));
    const Index rank = 4;
    auto lora_a = random_buffer<float>(dev, rank * D, 11, 0.1f);
    auto lora_b = random_buffer<float>(dev, Qd * rank, 12, 0.1f);
    auto d_a = random_buffer<float>(dev, rank * D, 13);
    auto d_b = random_buffer<float>(dev, Qd * rank, 14);
    DeviceBuffer<float> z(dev, static_cast<std::size_t>(M * rank));
    std::vector<std::uint64_t> row_keys_host(static_cast<std::size_t>(M));
    for (Index i = 0; i < M; ++i) row_keys_host[i] = mix64(static_cast<std::uint64_t>(i));
    DeviceBuffer<std::uint64_t> row_keys;
    upload<std::uint64_t>(dev, row_keys, row_keys_host);

    // The reference: a copy of as many bytes as SwiGLU's gate_up, read once and written once.
    const double copy_bytes = 2.0 * 4.0 * static_cast<double>(M * 2 * I);
    DeviceBuffer<float> copy_dst(dev, static_cast<std::size_t>(M * 2 * I));
    const double copy_s = seconds_per_call(dev, repeats, [&] {
      dev.copy(copy_dst.data(), gate_up.data(),
               static_cast<std::size_t>(M * 2 * I) * sizeof(float));
    });
    const double copy_gbps = copy_bytes / copy_s / 1e9;
    print_kv("copy_us", copy_s * 1e6);
    print_kv("copy_gbps", copy_gbps);

    const double m = static_cast<double>(M), d = static_cast<double>(D),
                 i_ = static_cast<double>(I), q = static_cast<double>(Qd);
    auto report = [&](const std::string& name, double bytes, const std::function<void()>& op) {
      const double s = seconds_per_call(dev, repeats, op);
      const double gbps = bytes / s / 1e9;
      print_kv(name + "_us", s * 1e6);
      print_kv(name + "_gbps", gbps);
      print_kv(name + "_of_copy", gbps / copy_gbps);
    };
    // RMSNorm and SwiGLU (as the seed's layer runs it: its rounding only) are also timed one
    // column a thread, the kernels that the 16-byte paths replaced on the GPU, side by side with
    // them: views a value off their 16 bytes take that path
    // (CudaRmsNormQuads.PerThreadByLengthAndAlignment), and M - 1 rows keep them inside their
    // buffers. `op(rows, shift)` runs the kernel on rows rows of views shifted by shift values.
    using ShiftedOp = std::function<void(Index rows, Index shift)>;
    auto report_both = [&](const std::string& name, double bytes_per_row, const ShiftedOp& op) {
      report(name, m * bytes_per_row, [&] { op(M, 0); });
      if (M > 1) {
        report(name + "_one_column", (m - 1) * bytes_per_row, [&] { op(M - 1, 1); });
      }
    };
    // RMSNorm: x read, the fp32 output and its bf16 rounding written; backward: dy, x, dx read,
    // dx written (accumulating, as the layer's).
    report_both("rmsnorm_forward", d * (4 + 4 + 2), [&](Index rows, Index shift) {
      k->rmsnorm_forward(h.data() + shift, rstd.data(), x.data() + shift, norm_w.data(), rows, D,
                         1e-5, rounded.data() + shift);
    });
    report_both("rmsnorm_backward", d * 16, [&](Index rows, Index shift) {
      k->rmsnorm_backward(dx.data() + shift, h.data() + shift, x.data() + shift, rstd.data(),
                          norm_w.data(), rows, D, true);
    });
    // RoPE on q and k of the fused rows (q's heads, then k's, in one call as the layer's): read
    // and written in place.
    report("rope", m * static_cast<double>(Qd + KVd) * 8, [&] {
      k->rope_rotate(qkv.data(), positions.data(), rope, M, W3, c.num_heads + c.num_kv_heads,
                     false);
    });
    report("swiglu_forward", m * i_ * (8 + 4 + 2),
           [&] { k->swiglu_forward(act.data(), gate_up.data(), M, I, rounded.data()); });
    report_both("swiglu_forward_rounding_only", i_ * (8 + 2), [&](Index rows, Index shift) {
      k->swiglu_forward(nullptr, gate_up.data() + shift, rows, I, rounded.data() + shift);
    });
    report("swiglu_backward", m * i_ * (8 + 4 + 8 + 4), [&] {
      k->swiglu_backward(d_gate_up.data(), d_act.data(), gate_up.data(), M, I, rounded.data());
    });
    report_both("swiglu_backward_rounding_only", i_ * (8 + 4 + 4), [&](Index rows, Index shift) {
      k->swiglu_backward(nullptr, d_act.data() + shift, gate_up.data() + shift, rows, I,
                         rounded.data() + shift);
    });
    // The bf16 residual's rounding (in place, with a copy) and the widening of bf16 values.
    report("round_to_bf16", m * d * (4 + 4 + 2),
           [&] { k->round_to_bf16(x.data(), rounded.data(), M * D); });
    report("widen_bf16", m * d * (2 + 4), [&] { k->widen_bf16(h.data(), rounded.data(), M * D); });
    // The seed's LoRA branch (rank 4) on a q-like module [D -> D] whose output is q's columns of
    // the fused rows: forward (z = drop(x) A^T, y += s z B^T) reads x once and y twice-over (read
    // and written); backward reads dy twice (dB, dz), x once (dA), and reads and writes dx.
    for (double p : {0.0, 0.05}) {
      const DropoutMask mask{p, 12345, row_keys.data()};
      const std::string suffix = p > 0 ? "_dropout" : "";
      const Mat<const float> src = Mat<const float>::dense(h.data(), M, D);
      // The contraction alone (z = drop(x) A^T: x read once), so that the forward's expansion
      // is the difference.
      report("lora_project" + suffix, m * d * 4,
             [&] { k->lora_project(z.data(), src, lora_a.data(), rank, mask); });
      report("lora_forward" + suffix, m * (d * 4 + q * 8), [&] {
        k->lora_forward(Mat<float>{qkv.data(), M, Qd, W3, 1}, z.data(), src, lora_a.data(),
                        lora_b.data(), rank, 4.0, mask);
      });
      report("lora_backward" + suffix, m * (q * (4 + 4) + d * (4 + 8)), [&] {
        k->lora_backward(Mat<float>::dense(dx.data(), M, D), d_a.data(), d_b.data(),
                         Mat<const float>{qkv.data(), M, Qd, W3, 1}, z.data(), src, lora_a.data(),
                         lora_b.data(), rank, 4.0, mask);
      });
    }
    // The seed's q, k and v branches (dropout on), which share x and dx: as kernels.hpp's
    // lora_*_shared run them (on the GPU the forward one by one, the backward one group, x read
    // once for their dA, dx read and written once; where the attention runs, the layer's forward
    // is their three lora_project and attention_forward_with_lora below) and, for the backward,
    // one by one, for the same least bytes (the forward reads x once and reads and writes the
    // q/k/v columns; the backward reads those columns' gradients twice, x once, and reads and
    // writes dx), so that the two rates compare as the times do. (A grouped forward, x read
    // once for the three z, ran slower than one by one on an H100, 2026-12-06: cuda/lora.cu.)
    {
      DeviceBuffer<float> z3(dev, static_cast<std::size_t>(3 * M * rank));
      const Index col[3] = {0, Qd, Qd + KVd}, width[3] = {Qd, KVd, KVd};
      const Mat<const float> src = Mat<const float>::dense(h.data(), M, D);
      // Each branch its own A, B and their gradients, as in a layer (shared ones would share
      // their cache lines).
      std::vector<DeviceBuffer<float>> weights;
      Kernels<Bf16Policy>::LoraForwardBranch fwd[3];
      Kernels<Bf16Policy>::LoraBackwardBranch bwd[3];
      for (int b = 0; b < 3; ++b) {
        const auto seed = static_cast<std::uint32_t>(20 + 4 * b);
        float* a = weights.emplace_back(random_buffer<float>(dev, rank * D, seed, 0.1f)).data();
        float* bw =
            weights.emplace_back(random_buffer<float>(dev, width[b] * rank, seed + 1, 0.1f)).data();
        float* da = weights.emplace_back(random_buffer<float>(dev, rank * D, seed + 2)).data();
        float* db =
            weights.emplace_back(random_buffer<float>(dev, width[b] * rank, seed + 3)).data();
        const DropoutMask mask{0.05, 12345u + static_cast<std::uint64_t>(b), row_keys.data()};
        const Mat<float> columns{qkv.data() + col[b], M, width[b], W3, 1};
        fwd[b] = {columns, z3.data() + b * M * rank, a, bw, mask};
        bwd[b] = {da, db, columns.as_const(), fwd[b].z, a, bw, mask};
      }
      const Mat<float> diff_src = Mat<float>::dense(dx.data(), M, D);
      const double w3 = static_cast<double>(W3);
      report("lora_qkv_forward", m * (d * 4 + w3 * 8),
             [&] { k->lora_forward_shared(fwd, src, rank, 4.0); });
      report("lora_qkv_backward", m * (w3 * 8 + d * 12),
             [&] { k->lora_backward_shared(diff_src, bwd, src, rank, 4.0); });
      report("lora_qkv_backward_one_by_one", m * (w3 * 8 + d * 12), [&] {
        for (const auto& g : bwd)
          k->lora_backward(diff_src, g.diff_a, g.diff_b, g.diff_dst, g.z, src, g.a, g.b, rank, 4.0,
                           g.dropout);
      });
    }
  }

  // Attention on the fused q/k/v rows, segments of `seq` tokens (the last may be shorter).
  // FLOPs as FlashAttention counts them, causal: the forward's two products over the
  // L (L + 1) / 2 query-key pairs of a segment, 2 x 2 hd each per head; the backward's five.
  std::vector<Segment> segments;
  double pairs = 0;
  for (Index begin = 0; begin < M; begin += seq) {
    const Index length = std::min(seq, M - begin);
    segments.push_back({begin, length});
    pairs += static_cast<double>(length) * static_cast<double>(length + 1) / 2;
  }
  const AttentionShape attention{c.num_heads, c.num_kv_heads, c.head_dim, 0};
  const double forward_flops = 2 * 2 * pairs * static_cast<double>(c.head_dim * c.num_heads);
  auto d_out = random_buffer<float>(dev, M * Qd, 16);
  // Written by the forward (out, its rounding, lse) and the backward (d_qkv) before any read.
  DeviceBuffer<float> out(dev, static_cast<std::size_t>(M * Qd)),
      lse(dev, static_cast<std::size_t>(M * c.num_heads)),
      d_qkv(dev, static_cast<std::size_t>(M * W3));
  DeviceBuffer<bf16> out_rounded(dev, static_cast<std::size_t>(M * Qd)),
      d_qkv_rounded(dev, static_cast<std::size_t>(M * W3));
  print_kv("attention_segments", static_cast<double>(segments.size()));
  print_kv("attention_seq", static_cast<double>(seq));
  // Per call: the whole op, and the attention kernels alone (the profiler's attention time on
  // the device's clock where it has one; on a GPU the rest is cuDNN's layout copies).
  Profiler& profiler = rt.profiler();
  const std::unique_ptr<DeviceClock> clock = dev.make_clock();
  profiler.set_device_clock(clock.get());
  auto report_attention = [&](const std::string& name, double flops, int calls_timed,
                              const std::function<void()>& op) {
    profiler.enable(true);
    op();  // warm-up: cuDNN builds its graphs
    dev.synchronize();
    profiler.reset();                                         // (drops the warm-up's marks)
    const double s = seconds_per_call(dev, calls_timed, op);  // (its own warm-up call included)
    profiler.collect_device();
    const double calls = calls_timed + 1.0;
    const double kernel_s = (clock ? profiler.device_seconds(ProfileCategory::kAttention)
                                   : profiler.seconds(ProfileCategory::kAttention)) /
                            calls;
    profiler.enable(false);
    print_kv(name + "_us", s * 1e6);
    print_kv(name + "_tflops", flops / s / 1e12);
    print_kv(name + "_kernel_us", kernel_s * 1e6);
    print_kv(name + "_kernel_tflops", kernel_s > 0 ? flops / kernel_s / 1e12 : 0.0);
  };
  // As the run computes it (on a GPU, cuDNN's where it takes the shape), then on a GPU the
  // backend's own kernel (fused off: what serves fp32 mode and the shapes cuDNN refuses), over
  // fewer calls. As the layer's, each forward starts with RoPE on q and k (rotating the same
  // buffer again on every call), and each backward takes its forward's output and statistics
  // and ends with RoPE's backward and the rounding of d(q/k/v) for the projection.
  const RopeRotation rotation{positions.data(), &rope};
  for (const bool fused : {true, false}) {
    if (!fused && dev.kind() == DeviceKind::kCpu) break;
    AttentionOptions options;
    options.fused = fused;
    const std::string name = fused ? "attention_" : "attention_reference_";
    const int calls = fused ? repeats : std::min(repeats, 3);
    report_attention(name + "forward", forward_flops, calls, [&] {
      k->attention_forward(out.data(), out_rounded.data(), lse.data(), qkv.data(), segments, M,
                           attention, options, nullptr, &rotation);
    });
    report_attention(name + "backward", 2.5 * forward_flops, calls, [&] {
      k->attention_backward(d_qkv.data(), d_qkv_rounded.data(), d_out.data(), qkv.data(),
                            out.data(), lse.data(), segments, M, attention, options, &rotation,
                            AttentionInputs::kAny);
    });
    if (!fused) continue;
    // As the layer runs it where q, k and v have LoRA branches (the seed's, rank 4): their
    // expansions, z made beforehand (lora_project's), added to q/k/v first (on a GPU with cuDNN
    // in the pass that rotates and copies them; else by lora_expand). Against attention_forward
    // and the three expansions (lora_qkv_forward less three lora_project), what that pass saves.
    {
      const Index rank = 4, qd = c.num_heads * c.head_dim, kvd = c.num_kv_heads * c.head_dim;
      const Index width[3] = {qd, kvd, kvd};
      std::vector<DeviceBuffer<float>> buffers;
      QkvLoraExpansions<float> lora;
      for (int b = 0; b < 3; ++b) {
        const auto seed = static_cast<std::uint32_t>(40 + 2 * b);
        lora.z[b] = buffers.emplace_back(random_buffer<float>(dev, M * rank, seed)).data();
        lora.b[b] =
            buffers.emplace_back(random_buffer<float>(dev, width[b] * rank, seed + 1, 0.1f)).data();
      }
      lora.rank = rank;
      lora.scale = 4.0;
      // (each call adds to the same q/k/v again, as the RoPE rows rotate them again: the values
      // drift, the work does not)
      report_attention("attention_forward_with_lora", forward_flops, calls, [&] {
        k->attention_forward(out.data(), out_rounded.data(), lse.data(), qkv.data(), segments, M,
                             attention, options, &lora, &rotation);
      });
    }
    // As the full recompute's backward runs it, right after its forward: on a GPU, with the
    // copies into cuDNN's layout that the forward left (the difference is those copies).
    k->attention_forward(out.data(), out_rounded.data(), lse.data(), qkv.data(), segments, M,
                         attention, options, nullptr, &rotation);
    report_attention("attention_backward_after_its_forward", 2.5 * forward_flops, calls, [&] {
      k->attention_backward(d_qkv.data(), d_qkv_rounded.data(), d_out.data(), qkv.data(),
                            out.data(), lse.data(), segments, M, attention, options, &rotation,
                            AttentionInputs::kLastForwards);
    });
  }
  profiler.set_device_clock(nullptr);  // before the clock goes
  return 0;
}

int main(int argc, char** argv) {
  return zerolora::bench::report_errors("bench_kernels", [&] { return bench_main(argc, argv); });
}
