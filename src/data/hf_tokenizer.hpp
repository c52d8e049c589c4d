// A Hugging Face tokenizer.json (with its tokenizer_config.json when present), encoded and
// decoded exactly as the tokenizers library does for the BPE pipelines of current models:
//   added tokens   found first in the raw text (leftmost-longest, single_word, lstrip/rstrip),
//                  those marked "normalized" in the normalised pieces; never split further
//   normalizer     then pre_tokenizer, then the BPE model on each piece (hf_text_steps.hpp,
//                  bpe_model.hpp)
//   post_processor only which special tokens a single sequence gets before and after it
//                  (prefix_ids / suffix_ids); encode() itself adds none, like
//                  add_special_tokens=False
//   decoder        on the ids' tokens, optionally without the special added tokens
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "data/bpe_model.hpp"
#include "data/hf_text_steps.hpp"

namespace zerolora {

struct AddedToken {
  std::string content;
  std::string match;  // what is looked for: the content, normalised when `normalized`
  std::int32_t id = 0;
  bool special = false, single_word = false, lstrip = false, rstrip = false, normalized = false;
};

class HfTokenizer {
 public:
  // tokenizer.json, and tokenizer_config.json beside it when that exists. Throws IoError,
  // FormatError or UnsupportedError naming the file.
  explicit HfTokenizer(const std::filesystem::path& tokenizer_json);
  HfTokenizer(const nlohmann::json& spec, const std::filesystem::path& tokenizer_json);

  // Throws FormatError when text is not well-formed UTF-8.
  std::vector<std::int32_t> encode(std::string_view text) const;
  // Ids without a token are skipped, as tokenizers does.
  std::string decode(std::span<const std::int32_t> ids, bool skip_special_tokens) const;

  std::optional<std::int32_t> token_id(std::string_view token) const;
  std::string token_text(std::int32_t id) const;  // empty for an id without a token
  std::int32_t vocab_size() const { return vocab_size_; }
  std::optional<std::int32_t> bos_id() const { return bos_id_; }
  std::optional<std::int32_t> eos_id() const { return eos_id_; }
  // The special tokens tokenizer(text) puts around one sequence (Llama 3: <|begin_of_text|>).
  const std::vector<std::int32_t>& prefix_ids() const { return prefix_ids_; }
  const std::vector<std::int32_t>& suffix_ids() const { return suffix_ids_; }
  // tokenizer_config.json's chat_template (the default one where it lists several); empty if
  // none.
  const std::string& chat_template() const { return chat_template_; }

 private:
  struct Split {
    std::size_t begin, end;
    std::optional<std::int32_t> token;  // set: the span is this added token
  };
  std::vector<Split> split_added(std::string_view text, bool normalized) const;
  void encode_text(std::string text, bool at_start, std::vector<std::int32_t>& out) const;
  void read_post_processor(const nlohmann::json& spec, const std::string& where);
  void read_config(const std::filesystem::path& config_file);

  BpeModel model_;
  HfNormalizer normalizer_;
  HfPreTokenizer pre_tokenizer_;
  HfDecoder decoder_;
  std::vector<AddedToken> added_;
  std::unordered_map<std::int32_t, std::size_t> added_by_id_;
  std::unordered_map<std::string, std::int32_t> added_by_content_;
  // Added tokens by the first byte of their content, longest first: raw and normalized ones.
  std::vector<std::vector<std::size_t>> raw_by_byte_, normalized_by_byte_;
  std::vector<std::int32_t> prefix_ids_, suffix_ids_;
  std::optional<std::int32_t> bos_id_, eos_id_;
  std::int32_t vocab_size_ = 0;
  std::string chat_template_;
};

// tokenizer_config.json's chat_template: the string, or the entry named "default" where it lists
// several; empty when there is none.
std::string read_chat_template(const nlohmann::json& tokenizer_config);

}  // namespace zerolora
