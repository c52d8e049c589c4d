// Opening what the commands share: a model directory's tokenizer (checked against its
// config) and a PEFT adapter for inference.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "data/tokenizer.hpp"
#include "io/llama_config.hpp"
#include "lora/lora_layout.hpp"

namespace zerolora::cli {

// model_dir/tokenizer.model; ShapeError when it has more pieces than the model's vocabulary.
Tokenizer open_tokenizer(const std::filesystem::path& model_dir, const LlamaConfig& config);

struct InferenceAdapter {
  std::unique_ptr<LoraLayout> layout;  // null: no adapter
  std::vector<float> params;
};

// An empty path gives no adapter. Dropout is off (inference).
InferenceAdapter load_inference_adapter(const std::string& path, const LlamaConfig& config);

}  // namespace zerolora::cli
