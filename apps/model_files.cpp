#include "apps/model_files.hpp"

#include "core/error.hpp"
#include "io/peft_adapter.hpp"

namespace zerolora::cli {

Tokenizer open_tokenizer(const std::filesystem::path& model_dir, const LlamaConfig& config) {
  Tokenizer tokenizer(model_dir / "tokenizer.model");
  if (tokenizer.vocab_size() > config.vocab_size)
    throw ShapeError((model_dir / "tokenizer.model").string() + " has " +
                     std::to_string(tokenizer.vocab_size()) +
                     " pieces but config.json says vocab_size " +
                     std::to_string(config.vocab_size));
  return tokenizer;
}

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
