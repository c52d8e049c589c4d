// A sentencepiece tokenizer (tokenizer.model, as Llama checkpoints ship it), via
// libsentencepiece. encode() does not add BOS/EOS: callers decide, as HF's
// add_special_tokens does.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/llama_config.hpp"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace zerolora {

class Tokenizer {
 public:
  // Throws IoError / FormatError naming the file.
  explicit Tokenizer(const std::filesystem::path& model_file);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  std::vector<std::int32_t> encode(std::string_view text) const;
  std::string decode(std::span<const std::int32_t> ids) const;
  std::int32_t bos_id() const;
  std::int32_t eos_id() const;
  std::int32_t vocab_size() const;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
};

// A model directory's tokenizer.model; ShapeError when it has more pieces than config.json's
// vocabulary.
Tokenizer open_model_tokenizer(const std::filesystem::path& model_dir, const LlamaConfig& config);

}  // namespace zerolora
