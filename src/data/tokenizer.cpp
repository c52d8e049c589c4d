#include "data/tokenizer.hpp"

#include <sentencepiece_processor.h>

#include "core/error.hpp"

namespace zerolora {

Tokenizer::Tokenizer(const std::filesystem::path& model_file)
    : path_(model_file), processor_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  if (!std::filesystem::is_regular_file(model_file))
    throw IoError(model_file.string() + ": tokenizer model not found");
  const auto status = processor_->Load(model_file.string());
  if (!status.ok())
    throw FormatError(model_file.string() + ": not a sentencepiece model (" + status.ToString() +
                      ")");
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<std::int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  const auto status = processor_->Encode(text, &ids);
  if (!status.ok())
    throw FormatError(path_.string() + ": cannot encode text (" + status.ToString() + ")");
  return {ids.begin(), ids.end()};
}

std::string Tokenizer::decode(std::span<const std::int32_t> ids) const {
  std::string text;
  const auto status = processor_->Decode(std::vector<int>(ids.begin(), ids.end()), &text);
  if (!status.ok())
    throw FormatError(path_.string() + ": cannot decode ids (" + status.ToString() + ")");
  return text;
}

std::int32_t Tokenizer::bos_id() const {
  return processor_->bos_id();
}
std::int32_t Tokenizer::eos_id() const {
  return processor_->eos_id();
}
std::int32_t Tokenizer::vocab_size() const {
  return processor_->GetPieceSize();
}

Tokenizer open_model_tokenizer(const std::filesystem::path& model_dir, const LlamaConfig& config) {
  Tokenizer tokenizer(model_dir / "tokenizer.model");
  if (tokenizer.vocab_size() > config.vocab_size)
    throw ShapeError((model_dir / "tokenizer.model").string() + " has " +
                     std::to_string(tokenizer.vocab_size()) +
                     " pieces but config.json says vocab_size " +
                     std::to_string(config.vocab_size));
  return tokenizer;
}

}  // namespace zerolora
