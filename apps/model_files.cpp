#include "apps/model_files.hpp"

#include "core/error.hpp"
#include "lora/peft_adapter.hpp"

namespace zerolora::cli {

InferenceAdapter load_inference_adapter(const std::string& path, const LlamaConfig& config) {
  InferenceAdapter adapter;
  if (path.empty()) return adapter;
  PeftAdapter loaded = load_peft_adapter(path, config);
  loaded.config.dropout = 0;
  adapter.layout = std::make_unique<LoraLayout>(config, loaded.config);
  adapter.params = std::move(loaded.params);
  return adapter;
}

}  // namespace zerolora::cli
