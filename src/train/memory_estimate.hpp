// Per-rank memory of a training run, predicted from the shapes, buffer by buffer as
// zerolora allocates them: base-weight shard, gathered units in flight (ZeRO-3), LoRA
// parameters, gradients and AdamW state, activations (layer inputs only with recompute, every
// layer's working set without), the fused loss's logits chunk, and the runtime itself.
#pragma once

#include <cstdint>
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
};

struct MemoryItem {
  std::string name;
  double bytes;
};

struct MemoryEstimate {
  std::vector<MemoryItem> items;
  double total() const;
};

MemoryEstimate estimate_memory(const LlamaConfig& model, const LoraLayout& lora,
                               const MemoryScenario& scenario);

// Refuses (ResourceError, with the arithmetic and the largest items) a run whose estimate,
// times the ranks on this machine, exceeds what the machine or its cgroup can still give;
// does nothing when that cannot be read.
void require_memory_fits(const MemoryEstimate& estimate, const MemoryScenario& scenario,
                         int local_ranks);

// Llama-2 7B, 13B and 70B configurations ("llama2-7b", "llama2-13b", "llama2-70b").
LlamaConfig preset_config(const std::string& name);
std::vector<std::string> preset_names();

}  // namespace zerolora
