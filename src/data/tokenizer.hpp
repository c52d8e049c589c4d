// The tokenizer of a model, in either format checkpoints ship:
//   tokenizer.json   Hugging Face tokenizers' format (Llama 3, Qwen2.5, Mistral v0.3, SmolLM2,
//                    the Llama 2 conversions): zerolora's own exact implementation
//                    (hf_tokenizer.hpp)
//   tokenizer.model  sentencepiece (Llama 2 as Meta ships it), via libsentencepiece
// A model directory is read as Transformers reads it: tokenizer.json first, else
// tokenizer.model. encode() adds no special tokens (add_special_tokens=False); adds_bos() says
// whether the tokenizer puts BOS in front of a sequence, and callers decide.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/llama_config.hpp"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace zerolora {

class HfTokenizer;

class Tokenizer {
 public:
  // A tokenizer.json, a sentencepiece model file, or a directory holding one of them. Throws
  // IoError / FormatError / UnsupportedError naming the file.
  explicit Tokenizer(const std::filesystem::path& file_or_directory);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Throws FormatError when text is not well-formed UTF-8.
  std::vector<std::int32_t> encode(std::string_view text) const;
  // skip_special_tokens drops special tokens (sentencepiece always drops its control tokens).
  std::string decode(std::span<const std::int32_t> ids, bool skip_special_tokens = false) const;
  std::int32_t bos_id() const;  // -1: none
  std::int32_t eos_id() const;  // -1: none
  // The token the tokenizer starts a sequence with (Llama 2 and 3, Mistral: BOS; Qwen2: none,
  // -1): tokenizer.json's post-processor, or sentencepiece's BOS.
  std::int32_t sequence_start_id() const;
  bool adds_bos() const { return sequence_start_id() >= 0; }
  std::int32_t vocab_size() const;
  std::optional<std::int32_t> token_id(std::string_view token) const;
  // The token's string as the vocabulary holds it (an added token's content); empty for an id
  // without one.
  std::string token_text(std::int32_t id) const;
  // tokenizer_config.json's chat template beside the tokenizer file; empty if none.
  const std::string& chat_template() const { return chat_template_; }
  // "tokenizer.json" or "sentencepiece".
  const char* format() const;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sentencepiece_;
  std::unique_ptr<HfTokenizer> hf_;
  std::string chat_template_;
};

// The tokenizer file a model directory would be read with: tokenizer.json, else
// tokenizer.model; IoError naming the directory when it has neither.
std::filesystem::path model_tokenizer_file(const std::filesystem::path& model_dir);

// A model's tokenizer (override: a file or directory given by the user, else model_dir's);
// ShapeError when it has more tokens than config.json's vocabulary.
Tokenizer open_model_tokenizer(const std::filesystem::path& model_dir, const LlamaConfig& config,
                               const std::filesystem::path& override = {});

}  // namespace zerolora
