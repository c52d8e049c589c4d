// Opening what the commands share: a PEFT adapter for inference.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "io/llama_config.hpp"
#include "lora/lora_layout.hpp"

namespace zerolora::cli {

struct InferenceAdapter {
  std::unique_ptr<LoraLayout> layout;  // null: no adapter
  std::vector<float> params;
};

// An empty path gives no adapter. Dropout is off (inference).
InferenceAdapter load_inference_adapter(const std::string& path, const LlamaConfig& config);

}  // namespace zerolora::cli
