// Where every LoRA tensor lives in one flat buffer. Parameters, gradients and AdamW moments
// all use this same layout, so a ZeRO shard of any of them is just an offset and a length.
// Order: layer by layer, modules in LoraModule order, A then B.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/types.hpp"
#include "io/llama_config.hpp"
#include "lora/lora_config.hpp"

namespace zerolora {

struct LoraTensorEntry {
  std::string name;  // PEFT name: base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight
  int layer;
  LoraModule module;
  bool is_b;
  Index rows, cols;  // A: [r, in]; B: [out, r]
  Index offset;
  Index numel() const { return rows * cols; }
};

struct LoraAdapterSlots {
  Index a_offset, b_offset;
  Index in, out;
};

class LoraLayout {
 public:
  LoraLayout(const LlamaConfig& model, const LoraConfig& lora);

  const LoraConfig& config() const { return lora_; }
  const std::vector<LoraTensorEntry>& entries() const { return entries_; }
  Index size() const { return size_; }
  // nullptr when (layer, module) has no adapter.
  const LoraAdapterSlots* adapter(int layer, LoraModule module) const;
  const LoraTensorEntry* find(const std::string& name) const;

 private:
  LoraConfig lora_;
  std::vector<LoraTensorEntry> entries_;
  std::vector<std::array<LoraAdapterSlots, kLoraModuleCount>> slots_;
  std::vector<std::array<bool, kLoraModuleCount>> present_;
  Index size_ = 0;
};

// PEFT name of an adapter tensor.
std::string lora_tensor_name(int layer, LoraModule module, bool is_b);
// Input and output features of the base projection `module`.
std::array<Index, 2> lora_module_dims(const LlamaConfig& model, LoraModule module);

// PEFT's initialisation (see lora_config.hpp), from a seed; B = 0.
template <class T>
void init_lora_params(std::span<T> params, const LoraLayout& layout, std::uint64_t seed);

}  // namespace zerolora
