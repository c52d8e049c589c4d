#include "data/tokenizer.hpp"

#include <sentencepiece_processor.h>

#include "core/error.hpp"
#include "data/hf_tokenizer.hpp"
#include "data/unicode_text.hpp"
#include "io/json_file.hpp"

namespace zerolora {

std::filesystem::path model_tokenizer_file(const std::filesystem::path& model_dir) {
  for (const char* name : {"tokenizer.json", "tokenizer.model"})
    if (std::filesystem::is_regular_file(model_dir / name)) return model_dir / name;
  throw IoError(model_dir.string() + ": no tokenizer.json or tokenizer.model (give --tokenizer)");
}

Tokenizer::Tokenizer(const std::filesystem::path& file_or_directory) : path_(file_or_directory) {
  if (std::filesystem::is_directory(path_)) path_ = model_tokenizer_file(path_);
  if (!std::filesystem::is_regular_file(path_))
    throw IoError(path_.string() + ": tokenizer file not found");
  if (path_.extension() == ".json") {
    hf_ = std::make_unique<HfTokenizer>(path_);
    chat_template_ = hf_->chat_template();
  } else {
    sentencepiece_ = std::make_unique<sentencepiece::SentencePieceProcessor>();
    const auto status = sentencepiece_->Load(path_.string());
    if (!status.ok())
      throw FormatError(path_.string() + ": not a sentencepiece model (" + status.ToString() + ")");
    const auto config_file = path_.parent_path() / "tokenizer_config.json";
    if (std::filesystem::is_regular_file(config_file))
      chat_template_ = read_chat_template(read_json_file(config_file));
  }
  // Transformers 4.43 and later save the template in a file of its own, which takes priority.
  const auto template_file = path_.parent_path() / "chat_template.jinja";
  if (std::filesystem::is_regular_file(template_file))
    chat_template_ = read_text_file(template_file);
}

Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

std::vector<std::int32_t> Tokenizer::encode(std::string_view text) const {
  if (hf_) return hf_->encode(text);
  if (const auto bad = first_invalid_utf8(text))
    throw FormatError("text is not valid UTF-8 (byte " + std::to_string(*bad) + ")");
  std::vector<int> ids;
  const auto status = sentencepiece_->Encode(text, &ids);
  if (!status.ok())
    throw FormatError(path_.string() + ": cannot encode text (" + status.ToString() + ")");
  return {ids.begin(), ids.end()};
}

std::string Tokenizer::decode(std::span<const std::int32_t> ids, bool skip_special_tokens) const {
  if (hf_) return hf_->decode(ids, skip_special_tokens);
  std::string text;
  const auto status = sentencepiece_->Decode(std::vector<int>(ids.begin(), ids.end()), &text);
  if (!status.ok())
    throw FormatError(path_.string() + ": cannot decode ids (" + status.ToString() + ")");
  return text;
}

std::int32_t Tokenizer::bos_id() const {
  if (hf_) return hf_->bos_id().value_or(-1);
  return sentencepiece_->bos_id();
}
std::int32_t Tokenizer::eos_id() const {
  if (hf_) return hf_->eos_id().value_or(-1);
  return sentencepiece_->eos_id();
}
std::int32_t Tokenizer::sequence_start_id() const {
  if (hf_) return hf_->prefix_ids().empty() ? -1 : hf_->prefix_ids().front();
  return sentencepiece_->bos_id();  // LlamaTokenizer's add_bos_token default
}
std::int32_t Tokenizer::vocab_size() const {
  if (hf_) return hf_->vocab_size();
  return sentencepiece_->GetPieceSize();
}
std::optional<std::int32_t> Tokenizer::token_id(std::string_view token) const {
  if (hf_) return hf_->token_id(token);
  const int id = sentencepiece_->PieceToId(token);
  if (id < 0 || sentencepiece_->IdToPiece(id) != token) return std::nullopt;
  return id;
}
std::string Tokenizer::token_text(std::int32_t id) const {
  if (hf_) return hf_->token_text(id);
  if (id < 0 || id >= sentencepiece_->GetPieceSize()) return {};
  return sentencepiece_->IdToPiece(id);
}
const char* Tokenizer::format() const {
  return hf_ ? "tokenizer.json" : "sentencepiece";
}

Tokenizer open_model_tokenizer(const std::filesystem::path& model_dir, const LlamaConfig& config,
                               const std::filesystem::path& override) {
  Tokenizer tokenizer(override.empty() ? model_dir : override);
  if (tokenizer.vocab_size() > config.vocab_size)
    throw ShapeError(tokenizer.path().string() + " has " + std::to_string(tokenizer.vocab_size()) +
                     " tokens but " + (model_dir / "config.json").string() + " says vocab_size " +
                     std::to_string(config.vocab_size));
  return tokenizer;
}

}  // namespace zerolora
