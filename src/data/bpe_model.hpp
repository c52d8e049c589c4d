// The BPE model of a tokenizer.json ("model": {"type": "BPE", ...}), as Hugging Face tokenizers
// applies it to one pre-tokenized word: the word's characters become symbols (a character not in
// the vocabulary becomes its UTF-8 bytes as <0xXX> tokens with byte_fallback, else the unknown
// token, consecutive ones fused with fuse_unk), then the pair of adjacent symbols with the
// lowest merge rank is merged, leftmost first, until no pair has a merge. ignore_merges (Llama 3)
// takes a word that is itself in the vocabulary whole.
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace zerolora {

class BpeModel {
 public:
  // `where` names the file in errors. Throws FormatError / UnsupportedError.
  BpeModel(const nlohmann::json& model, const std::string& where);

  // Appends the ids of one word (well-formed UTF-8, non-empty).
  void encode_word(std::string_view word, std::vector<std::int32_t>& out) const;

  std::optional<std::int32_t> token_id(std::string_view token) const;
  // The token's string; nullptr for an id the vocabulary does not have.
  const std::string* token(std::int32_t id) const;
  std::int32_t size() const { return static_cast<std::int32_t>(tokens_.size()); }
  bool byte_fallback() const { return byte_fallback_; }

 private:
  struct StringHash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct Merge {
    std::int32_t rank, merged_id;
  };
  static std::uint64_t pair_key(std::int32_t left, std::int32_t right) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(left)) << 32) |
           static_cast<std::uint32_t>(right);
  }

  std::unordered_map<std::string, std::int32_t, StringHash, std::equal_to<>> vocab_;
  std::vector<std::string> tokens_;  // by id; empty where the vocabulary has a gap
  std::vector<bool> has_token_;
  std::unordered_map<std::uint64_t, Merge> merges_;
  std::array<std::int32_t, 256> byte_token_ids_{};  // <0xXX> ids, -1 where absent
  std::optional<std::int32_t> unk_id_;
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;
};

}  // namespace zerolora
