// `zerolora env`: what this zerolora was built with and what it finds on this machine (the CPU,
// memory, each GPU and whether the CUDA backend can train on it, the libraries it loads at run
// time), as `transformers env` and DeepSpeed's `ds_report` do: for a bug report, or to see
// before a run whether `--device cuda` will work. It reads properties only: no GPU context is
// made, nothing is allocated on a GPU, and it exits 0 whatever it finds.
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>

#include "apps/commands.hpp"
#include "core/error.hpp"
#include "core/runtime.hpp"
#include "core/system_memory.hpp"
#include "ops/matmul.hpp"
#ifdef ZEROLORA_CUDA
#include "cuda/cuda_device.hpp"
#include "cuda/cuda_ops.hpp"
#endif

namespace zerolora::cli {
namespace {

void line(const std::string& key, const std::string& value) {
  std::printf("%-16s %s\n", (key + ":").c_str(), value.c_str());
}

// /proc/cpuinfo's first "model name", or "" where there is none.
std::string cpu_model() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string text; std::getline(cpuinfo, text);)
    if (text.rfind("model name", 0) == 0) {
      const auto colon = text.find(':');
      const auto start =
          colon == std::string::npos ? colon : text.find_first_not_of(' ', colon + 1);
      return start == std::string::npos ? "" : text.substr(start);
    }
  return "";
}

void report_cpu() {
#ifdef ZEROLORA_CPU_DISPATCH
  line("cpu kernels", "portable (the fast ones chosen for this CPU at run time)");
#else
  line("cpu kernels", "compiled for the build machine (ZEROLORA_NATIVE)");
#endif
  const std::string model = cpu_model();
  line("cpu", (model.empty() ? std::string("?") : model) + ", " +
                  std::to_string(std::thread::hardware_concurrency()) + " hardware threads");
  Runtime rt(1);
  std::string bf16 = "yes";
  try {
    require_bf16_matmul(rt);
  } catch (const Error& e) {
    bf16 = std::string("no: ") + e.what();
  }
  line("cpu bf16 matmul", bf16);
  line("oneDNN", onednn_version());
  if (const auto memory = available_memory())
    line("memory", human_bytes(memory->bytes) + " available (" + memory->source + ")");
  else
    line("memory", "unknown (neither /proc/meminfo nor the cgroup's limit could be read)");
}

void report_gpus() {
#ifdef ZEROLORA_CUDA
  line("cuda backend", cuda::cuda_build_summary());
  std::string why_none;
  const int visible = cuda::visible_gpus(&why_none);
  if (visible == 0) line("gpus", why_none);
  for (int ordinal = 0; ordinal < visible; ++ordinal) {
    const cuda::GpuSummary gpu = cuda::gpu_summary(ordinal);
    line("gpu cuda:" + std::to_string(ordinal),
         gpu.name + ", compute capability " + std::to_string(gpu.major) + "." +
             std::to_string(gpu.minor) + ", " + human_bytes(gpu.memory_bytes) + ": " +
             (gpu.shortfall.empty() ? "--device cuda:" + std::to_string(ordinal) + " trains here"
                                    : "cannot train here: " + gpu.shortfall));
  }
  for (const cuda::LibraryStatus& library : cuda::cuda_libraries())
    line(library.name, library.loads ? library.version_or_why : "no: " + library.version_or_why);
#else
  line("cuda backend", "not in this build (configured without ZEROLORA_CUDA: no nvcc found)");
#endif
}

}  // namespace

Command add_env(CLI::App& app) {
  app.add_subcommand(
      "env",
      "What this zerolora was built with and finds here: CPU, memory, each GPU and "
      "whether --device cuda trains on it, the CUDA libraries it loads (for bug reports)");
  return [] {
    line("zerolora", ZEROLORA_VERSION);
    report_cpu();
    report_gpus();
    return 0;
  };
}

}  // namespace zerolora::cli
