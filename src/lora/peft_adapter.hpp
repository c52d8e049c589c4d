// PEFT LoRA adapter directories, the format Transformers + PEFT load:
//   adapter_config.json        peft_type LORA, task_type CAUSAL_LM, r, lora_alpha, lora_dropout,
//                              target_modules, bias "none", use_rslora, base_model_name_or_path...
//   adapter_model.safetensors  base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight
//                              [r, in] and ...lora_B.weight [out, r], metadata {"format": "pt"}
// Both files are written to temporary names and renamed, so a crash never leaves a
// half-written adapter. Reading accepts adapters written by PEFT (F32/F16/BF16) and checks
// every tensor against the base model, refusing features zerolora does not implement.
#pragma once

#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "io/llama_config.hpp"
#include "lora/lora_layout.hpp"

namespace zerolora {

void save_peft_adapter(const std::filesystem::path& dir, const LoraLayout& layout,
                       std::span<const float> params, const std::string& base_model_name_or_path);

struct PeftAdapter {
  LoraConfig config;
  std::string base_model_name_or_path;
  std::vector<float> params;  // in LoraLayout(base, config) order
};

// Throws IoError, FormatError, UnsupportedError, ShapeError (an adapter made for another base).
PeftAdapter load_peft_adapter(const std::filesystem::path& dir, const LlamaConfig& base);

// True when `dir` holds adapter_config.json.
bool is_peft_adapter_dir(const std::filesystem::path& dir);

}  // namespace zerolora
