// The text steps of a tokenizer.json around its model, each built from its JSON entry and
// applied as Hugging Face tokenizers applies it:
//   normalizer     NFC/NFD/NFKC/NFKD, Lowercase, Prepend, Replace, Strip, Sequence
//   pre_tokenizer  Split (regex or string, every delimiter behaviour, invert), ByteLevel (GPT-2's
//                  byte-to-character map, its regex when use_regex), Metaspace (prepend
//                  schemes, split), Digits, Whitespace, WhitespaceSplit, Punctuation, Sequence
//   decoder        ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip, Sequence
// Anything else is refused with UnsupportedError naming the step, never approximated.
#pragma once

#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace zerolora {

// A piece of the input on its way to the model. at_start: it begins at the first character of
// the whole input (Metaspace's "first" prepend scheme asks).
struct TextPiece {
  std::string text;
  bool at_start = false;
};

class HfNormalizer {
 public:
  // spec: the tokenizer.json "normalizer" entry (null: none). where: the file, for errors.
  HfNormalizer(const nlohmann::json& spec, const std::string& where);
  ~HfNormalizer();
  HfNormalizer(HfNormalizer&&) noexcept;
  std::string apply(std::string text) const;
  bool identity() const;

 private:
  struct Step;
  std::vector<Step> steps_;
};

class HfPreTokenizer {
 public:
  HfPreTokenizer(const nlohmann::json& spec, const std::string& where);
  ~HfPreTokenizer();
  HfPreTokenizer(HfPreTokenizer&&) noexcept;
  std::vector<TextPiece> apply(TextPiece piece) const;

 private:
  struct Step;
  std::vector<Step> steps_;
};

class HfDecoder {
 public:
  HfDecoder(const nlohmann::json& spec, const std::string& where);
  ~HfDecoder();
  HfDecoder(HfDecoder&&) noexcept;
  std::string apply(std::vector<std::string> tokens) const;

 private:
  struct Step;
  std::vector<Step> steps_;
};

// GPT-2's byte-level alphabet: every byte as a printable character.
std::string byte_level_encode(std::string_view bytes);

// Bytes to text the way Rust's String::from_utf8_lossy does: each maximal ill-formed subpart
// becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);

}  // namespace zerolora
