#include "data/bpe_model.hpp"

#include <cstdio>
#include <nlohmann/json.hpp>
#include <queue>

#include "core/error.hpp"
#include "data/unicode_text.hpp"

namespace zerolora {
namespace {

std::string optional_string(const nlohmann::json& j, const char* key) {
  const auto it = j.find(key);
  return it == j.end() || it->is_null() ? std::string() : it->get<std::string>();
}

}  // namespace

BpeModel::BpeModel(const nlohmann::json& model, const std::string& where) {
  byte_token_ids_.fill(-1);
  if (!optional_string(model, "continuing_subword_prefix").empty() ||
      !optional_string(model, "end_of_word_suffix").empty())
    throw UnsupportedError(where +
                           ": BPE with continuing_subword_prefix or end_of_word_suffix (a "
                           "WordPiece-style BPE) is not supported");
  if (model.contains("dropout") && !model["dropout"].is_null() &&
      model["dropout"].get<double>() != 0.0)
    throw UnsupportedError(where +
                           ": BPE dropout is a training-time augmentation that "
                           "zerolora does not apply; set \"dropout\": null");
  byte_fallback_ = model.value("byte_fallback", false);
  fuse_unk_ = model.value("fuse_unk", false);
  ignore_merges_ = model.value("ignore_merges", false);

  const auto& vocab = model.at("vocab");
  if (!vocab.is_object()) throw FormatError(where + ": model.vocab is not an object");
  std::int32_t max_id = -1;
  for (const auto& [token, id_json] : vocab.items()) {
    const auto id = id_json.get<std::int64_t>();
    if (id < 0 || id > (1 << 30))
      throw FormatError(where + ": vocabulary id " + std::to_string(id) + " of '" + token +
                        "' is out of range");
    vocab_.emplace(token, static_cast<std::int32_t>(id));
    max_id = std::max(max_id, static_cast<std::int32_t>(id));
  }
  tokens_.resize(static_cast<std::size_t>(max_id + 1));
  has_token_.assign(tokens_.size(), false);
  for (const auto& [token, id] : vocab_) {
    tokens_[static_cast<std::size_t>(id)] = token;
    has_token_[static_cast<std::size_t>(id)] = true;
  }
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    if (const auto it = vocab_.find(std::string_view(name)); it != vocab_.end())
      byte_token_ids_[static_cast<std::size_t>(b)] = it->second;
  }
  if (const std::string unk = optional_string(model, "unk_token"); !unk.empty()) {
    const auto it = vocab_.find(unk);
    if (it == vocab_.end())
      throw FormatError(where + ": unk_token '" + unk + "' is not in the vocabulary");
    unk_id_ = it->second;
  }

  // Merges as "left right" strings (older files) or [left, right] pairs (newer ones).
  const auto& merges = model.at("merges");
  std::int32_t rank = 0;
  for (const auto& m : merges) {
    std::string left, right;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const auto space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        throw FormatError(where + ": merge " + std::to_string(rank) + " ('" + s +
                          "') is not two tokens separated by one space");
      left = s.substr(0, space), right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2) {
      left = m[0].get<std::string>(), right = m[1].get<std::string>();
    } else {
      throw FormatError(where + ": merge " + std::to_string(rank) +
                        " is neither a string nor a pair");
    }
    const auto l = vocab_.find(left), r = vocab_.find(right), merged = vocab_.find(left + right);
    if (l == vocab_.end() || r == vocab_.end() || merged == vocab_.end())
      throw FormatError(where + ": merge " + std::to_string(rank) + " ('" + left + "' + '" + right +
                        "') names a token that is not in the vocabulary");
    // A pair listed twice takes its later rank, as in tokenizers' merge map.
    merges_[pair_key(l->second, r->second)] = Merge{rank, merged->second};
    ++rank;
  }
}

std::optional<std::int32_t> BpeModel::token_id(std::string_view token) const {
  const auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::token(std::int32_t id) const {
  if (id < 0 || id >= size() || !has_token_[static_cast<std::size_t>(id)]) return nullptr;
  return &tokens_[static_cast<std::size_t>(id)];
}

void BpeModel::encode_word(std::string_view word, std::vector<std::int32_t>& out) const {
  if (ignore_merges_)
    if (const auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  // Symbols as a doubly linked list over a vector; a merged-away symbol gets id -1.
  struct Symbol {
    std::int32_t id, prev, next;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  // An unknown character's token waits until the next known one (byte-fallback tokens do not
  // release it), so that consecutive unknowns fuse, as in tokenizers.
  bool unknown_pending = false;
  auto push = [&](std::int32_t id) {
    const auto n = static_cast<std::int32_t>(symbols.size());
    symbols.push_back({id, n - 1, n + 1});
  };
  for (std::size_t at = 0; at < word.size();) {
    const std::size_t len = utf8_length_at(word, at);
    const std::string_view ch = word.substr(at, len);
    at += len;
    if (const auto it = vocab_.find(ch); it != vocab_.end()) {
      if (unknown_pending) push(*unk_id_);
      unknown_pending = false;
      push(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (char c : ch) all = all && byte_token_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        for (char c : ch) push(byte_token_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (!unk_id_) continue;  // no unknown token: tokenizers drops the character
    if (unknown_pending && !fuse_unk_) push(*unk_id_);
    unknown_pending = true;
  }
  if (unknown_pending) push(*unk_id_);
  if (symbols.empty()) return;
  symbols.back().next = -1;

  struct Candidate {
    std::int32_t rank, pos, merged_id;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  auto offer = [&](std::int32_t pos) {
    const std::int32_t next = symbols[static_cast<std::size_t>(pos)].next;
    if (next < 0) return;
    const auto it = merges_.find(pair_key(symbols[static_cast<std::size_t>(pos)].id,
                                          symbols[static_cast<std::size_t>(next)].id));
    if (it != merges_.end()) queue.push({it->second.rank, pos, it->second.merged_id});
  };
  for (std::int32_t i = 0; i + 1 < static_cast<std::int32_t>(symbols.size()); ++i) offer(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[static_cast<std::size_t>(top.pos)];
    if (left.id < 0 || left.next < 0) continue;
    Symbol& right = symbols[static_cast<std::size_t>(left.next)];
    // A stale entry: one of the pair has merged with something else since it was queued.
    const auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.merged_id != top.merged_id) continue;
    left.id = top.merged_id;
    right.id = -1;
    left.next = right.next;
    if (right.next >= 0) symbols[static_cast<std::size_t>(right.next)].prev = top.pos;
    if (left.prev >= 0) offer(left.prev);
    offer(top.pos);
  }
  for (std::int32_t i = 0; i >= 0; i = symbols[static_cast<std::size_t>(i)].next)
    out.push_back(symbols[static_cast<std::size_t>(i)].id);
}

}  // namespace zerolora
