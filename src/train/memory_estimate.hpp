// Per-rank memory of a training run, predicted from the shapes, buffer by buffer as
// zerolora allocates them: base-weight shard, gathered units in flight (ZeRO-3), LoRA
// parameters, gradients and AdamW state, activations (layer inputs only with recompute, every
// layer's working set without), the fused loss's logits chunk, and the runtime itself.
// On a GPU (scenario.gpu) the items are split between the GPU's memory (weights, activations,
// the CUDA kernels' buffers: the run's peak_device_mib) and the host's (LoRA state, AdamW,
// the dataset); the GPU figures follow the CUDA backend's allocations but have not yet been
// checked against a GPU run.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "io/llama_config.hpp"
#include "lora/lora_layout.hpp"
#include "model/recompute_plan.hpp"

namespace zerolora {

struct MemoryScenario {
  int world_size = 1;
  int zero_stage = 3;
  int prefetch_depth = 1;
  std::int64_t micro_batch = 1;  // sequences per forward/backward
  std::int64_t seq_len = 2048;
  bool bf16 = true;
  Recompute recompute = Recompute::kAuto;  // kNone: no gradient checkpointing
  double recompute_budget_bytes = -1;      // kAuto's budget (< 0: the default)
  bool bf16_residual = true;               // layer inputs kept in bf16 (two fp32 working copies)
  int threads = 2;
  std::int64_t persistence_threshold = 100000;
  std::int64_t dataset_tokens = 0;  // the tokenized training set every rank holds
  bool gpu = false;                 // --device cuda: the model on a GPU
  bool staged = false;              // on GPUs, ZeRO-3's gathers staged through the host (mpi)
  // Evaluation: sequences per forward (0: the run does not evaluate), and its longest sequence
  // (0: seq_len). Its forward runs in the training's buffers, one layer's set included.
  std::int64_t eval_micro_batch = 0;
  std::int64_t eval_seq_len = 0;
};

struct MemoryItem {
  std::string name;
  double bytes;
  bool host = false;  // in host memory while the model runs on a GPU
};

struct MemoryEstimate {
  std::vector<MemoryItem> items;
  RecomputePlan recompute;  // every layer's level the activations were counted at
  // The memory the model runs in: the host's on the CPU, the GPU's on a GPU.
  double total() const;
  // On a GPU, what stays in host memory (0 on the CPU, where total() is everything).
  double host_total() const;
};

MemoryEstimate estimate_memory(const LlamaConfig& model, const LoraLayout& lora,
                               const MemoryScenario& scenario);

// Refuses (ResourceError, with the arithmetic and the largest items) a run whose estimate of
// host memory (on a GPU: the host items), times the ranks on this machine, exceeds what the
// machine or its cgroup can still give; does nothing when that cannot be read.
void require_memory_fits(const MemoryEstimate& estimate, const MemoryScenario& scenario,
                         int local_ranks);

// On a GPU: refuses (ResourceError, with the arithmetic and the largest items) a run whose
// estimate of GPU memory, times the ranks that share the GPU, exceeds `free_bytes`, what the
// GPU had free when the run opened it (device_name names it in the message).
void require_device_memory_fits(const MemoryEstimate& estimate, const MemoryScenario& scenario,
                                const std::string& device_name, double free_bytes,
                                int ranks_on_device);

// Recompute auto's default budget on a GPU (the scenario's, on a GPU and in auto), given
// `free_bytes`, what the GPU has free for this rank: the activations that memory holds beyond the
// run at full recompute (by this estimate), less a margin for what the estimate leaves out (the
// CUDA context's growth, the allocator's rounding, NCCL's buffers): kGpuRecomputeMargin of
// free_bytes, at least kGpuRecomputeMarginFloorBytes. Each layer kept spares backward its
// forward's recompute, and the GPU's memory is the run's own, where the host's is shared with
// the machine (the host default, default_recompute_budget_bytes, stays the CPU's). Zero (full
// recompute) where the memory holds nothing beyond it: never a budget that would make a run
// refused which fits at full recompute, as the host default, the floor once, did (Qwen2.5-7B
// at 1 x 32768 tokens on 80 GB: 43 GiB at full recompute, 78 with the host default's 37 kept).
inline constexpr double kGpuRecomputeMargin = 0.10;
inline constexpr double kGpuRecomputeMarginFloorBytes = 2.0 * 1073741824.0;
double gpu_recompute_budget_bytes(const LlamaConfig& model, const LoraLayout& lora,
                                  MemoryScenario scenario, double free_bytes);
// The budget a run plans recompute auto under, as `zerolora train` and estimate-memory resolve
// it: --recompute_budget_mib where given (>= 0); else in auto on a GPU with `gpu_free_bytes`
// for this rank, gpu_recompute_budget_bytes; else negative (the host default).
double run_recompute_budget_bytes(const LlamaConfig& model, const LoraLayout& lora,
                                  const MemoryScenario& scenario, double budget_mib,
                                  std::optional<double> gpu_free_bytes);

// Llama-2 7B, 13B and 70B configurations ("llama2-7b", "llama2-13b", "llama2-70b").
LlamaConfig preset_config(const std::string& name);
std::vector<std::string> preset_names();

}  // namespace zerolora
