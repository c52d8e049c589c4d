#include "data/hf_tokenizer.hpp"

#include <utf8proc.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "data/unicode_text.hpp"
#include "io/json_file.hpp"

namespace zerolora {
namespace {

const nlohmann::json& model_spec(const nlohmann::json& spec, const std::string& where) {
  if (!spec.is_object() || !spec.contains("model"))
    throw FormatError(where + ": not a tokenizer.json (no \"model\")");
  const auto& model = spec["model"];
  const std::string type = model.value("type", std::string("BPE"));
  if (type != "BPE")
    throw UnsupportedError(where + ": tokenizer model '" + type +
                           "' is not supported (only BPE, which Llama 3, Qwen2, Mistral and the "
                           "Llama 2 conversions use)");
  return model;
}

const nlohmann::json& entry(const nlohmann::json& spec, const char* key) {
  static const nlohmann::json null_json;  // immutable
  const auto it = spec.find(key);
  return it == spec.end() ? null_json : *it;
}

// A word character as tokenizers' single_word boundary test (Rust regex's \w): letters,
// letter numbers, marks, decimal digits, connector punctuation, the joiners, and the letters
// Unicode files as symbols but calls alphabetic (circled and squared Latin letters).
bool is_word_char(char32_t c) {
  if (c == 0x200C || c == 0x200D) return true;
  if ((c >= 0x24B6 && c <= 0x24E9) || (c >= 0x1F130 && c <= 0x1F149) ||
      (c >= 0x1F150 && c <= 0x1F169) || (c >= 0x1F170 && c <= 0x1F189))
    return true;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

// A token given as "text" or as {"content": "text", ...} in tokenizer_config.json.
std::optional<std::string> config_token(const nlohmann::json& config, const char* key) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content")) return (*it)["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

HfTokenizer::HfTokenizer(const std::filesystem::path& tokenizer_json)
    : HfTokenizer(read_json_file(tokenizer_json), tokenizer_json) {}

HfTokenizer::HfTokenizer(const nlohmann::json& spec, const std::filesystem::path& file)
    : model_(model_spec(spec, file.string()), file.string()),
      normalizer_(entry(spec, "normalizer"), file.string()),
      pre_tokenizer_(entry(spec, "pre_tokenizer"), file.string()),
      decoder_(entry(spec, "decoder"), file.string()) {
  const std::string where = file.string();
  vocab_size_ = model_.size();
  for (const auto& t : entry(spec, "added_tokens")) {
    AddedToken token;
    token.content = t.at("content").get<std::string>();
    token.id = t.at("id").get<std::int32_t>();
    token.special = t.value("special", false);
    token.single_word = t.value("single_word", false);
    token.lstrip = t.value("lstrip", false);
    token.rstrip = t.value("rstrip", false);
    token.normalized = t.value("normalized", !token.special);
    if (token.content.empty() || token.id < 0)
      throw FormatError(where + ": added token " + t.dump() +
                        " has empty content or a negative id");
    if (first_invalid_utf8(token.content))
      throw FormatError(where + ": added token " + std::to_string(token.id) +
                        " is not valid UTF-8");
    vocab_size_ = std::max(vocab_size_, token.id + 1);
    added_by_id_[token.id] = added_.size();
    added_by_content_[token.content] = token.id;
    added_.push_back(std::move(token));
  }
  raw_by_byte_.assign(256, {});
  normalized_by_byte_.assign(256, {});
  for (std::size_t i = 0; i < added_.size(); ++i) {
    // A normalized token is looked for in normalised text, so in its normalised form.
    auto& table = added_[i].normalized ? normalized_by_byte_ : raw_by_byte_;
    added_[i].match =
        added_[i].normalized ? normalizer_.apply(added_[i].content) : added_[i].content;
    if (added_[i].match.empty()) continue;
    table[static_cast<unsigned char>(added_[i].match[0])].push_back(i);
  }
  for (auto* table : {&raw_by_byte_, &normalized_by_byte_})
    for (auto& list : *table)
      std::stable_sort(list.begin(), list.end(), [&](std::size_t a, std::size_t b) {
        return added_[a].match.size() > added_[b].match.size();
      });
  read_post_processor(entry(spec, "post_processor"), where);
  read_config(file.parent_path() / "tokenizer_config.json");
}

void HfTokenizer::read_post_processor(const nlohmann::json& spec, const std::string& where) {
  if (spec.is_null()) return;
  const std::string type = spec.at("type").get<std::string>();
  if (type == "Sequence") {
    for (const auto& p : spec.at("processors")) read_post_processor(p, where);
  } else if (type == "TemplateProcessing") {
    const auto& specials = spec.at("special_tokens");
    bool after = false;
    for (const auto& item : spec.at("single")) {
      if (item.contains("Sequence")) {
        after = true;
        continue;
      }
      const std::string name = item.at("SpecialToken").at("id").get<std::string>();
      if (!specials.contains(name))
        throw FormatError(where + ": post_processor names special token '" + name +
                          "' that its special_tokens do not define");
      for (const auto& id : specials[name].at("ids"))
        (after ? suffix_ids_ : prefix_ids_).push_back(id.get<std::int32_t>());
    }
  } else if (type == "RobertaProcessing" || type == "BertProcessing") {
    prefix_ids_.push_back(spec.at("cls").at(1).get<std::int32_t>());
    suffix_ids_.push_back(spec.at("sep").at(1).get<std::int32_t>());
  } else if (type != "ByteLevel") {
    throw UnsupportedError(where + ": post_processor '" + type + "' is not supported");
  }
}

void HfTokenizer::read_config(const std::filesystem::path& config_file) {
  nlohmann::json config = nlohmann::json::object();
  if (std::filesystem::is_regular_file(config_file)) config = read_json_file(config_file);
  auto id_of = [&](const char* key) -> std::optional<std::int32_t> {
    const auto token = config_token(config, key);
    if (!token) return std::nullopt;
    const auto id = token_id(*token);
    if (!id)
      throw FormatError(config_file.string() + ": " + key + " '" + *token +
                        "' is not a token of tokenizer.json");
    return id;
  };
  // What tokenizer(text) adds comes from tokenizer.json's post-processor alone: Transformers 5
  // ignores tokenizer_config.json's add_bos_token / add_eos_token when tokenizer.json exists.
  bos_id_ = id_of("bos_token");
  eos_id_ = id_of("eos_token");
  if (!bos_id_ && prefix_ids_.size() == 1) bos_id_ = prefix_ids_[0];
  chat_template_ = read_chat_template(config);
}

std::string read_chat_template(const nlohmann::json& config) {
  const auto it = config.find("chat_template");
  if (it == config.end()) return {};
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array())  // [{"name": "default", "template": "..."}, ...]
    for (const auto& t : *it)
      if (t.value("name", std::string()) == "default") return t.at("template").get<std::string>();
  return {};
}

std::optional<std::int32_t> HfTokenizer::token_id(std::string_view token) const {
  if (const auto it = added_by_content_.find(std::string(token)); it != added_by_content_.end())
    return it->second;
  return model_.token_id(token);
}

std::string HfTokenizer::token_text(std::int32_t id) const {
  if (const auto it = added_by_id_.find(id); it != added_by_id_.end())
    return added_[it->second].content;
  const std::string* token = model_.token(id);
  return token ? *token : std::string();
}

std::vector<HfTokenizer::Split> HfTokenizer::split_added(std::string_view text,
                                                         bool normalized) const {
  const auto& table = normalized ? normalized_by_byte_ : raw_by_byte_;
  std::vector<Split> splits;
  std::size_t done = 0;  // text before this is in splits
  for (std::size_t at = 0; at < text.size();) {
    const AddedToken* found = nullptr;
    for (std::size_t i : table[static_cast<unsigned char>(text[at])]) {
      if (text.compare(at, added_[i].match.size(), added_[i].match) == 0) {
        found = &added_[i];
        break;
      }
    }
    if (!found) {
      ++at;
      continue;
    }
    std::size_t begin = at, end = at + found->match.size();
    at = end;  // the search goes on after this match, whether or not it is kept
    if (found->single_word) {
      const bool word_before =
          begin > 0 && is_word_char(utf8_decode_at(text, utf8_previous_start(text, begin)));
      const bool word_after = end < text.size() && is_word_char(utf8_decode_at(text, end));
      if (word_before || word_after) continue;
    }
    if (found->lstrip) {
      std::size_t b = begin;
      while (b > done) {
        const std::size_t prev = utf8_previous_start(text, b);
        if (!is_unicode_whitespace(utf8_decode_at(text, prev))) break;
        b = prev;
      }
      begin = b;
    }
    if (found->rstrip)
      while (end < text.size() && is_unicode_whitespace(utf8_decode_at(text, end)))
        end += utf8_length_at(text, end);
    if (done < begin) splits.push_back({done, begin, std::nullopt});
    splits.push_back({begin, end, found->id});
    done = end;
    at = std::max(at, end);
  }
  if (done < text.size()) splits.push_back({done, text.size(), std::nullopt});
  return splits;
}

void HfTokenizer::encode_text(std::string text, bool at_start,
                              std::vector<std::int32_t>& out) const {
  const std::string normalized = normalizer_.apply(std::move(text));
  for (const Split& s : split_added(normalized, true)) {
    if (s.token) {
      out.push_back(*s.token);
      continue;
    }
    for (const TextPiece& piece : pre_tokenizer_.apply(
             {normalized.substr(s.begin, s.end - s.begin), at_start && s.begin == 0}))
      model_.encode_word(piece.text, out);
  }
}

std::vector<std::int32_t> HfTokenizer::encode(std::string_view text) const {
  if (const auto bad = first_invalid_utf8(text))
    throw FormatError("text is not valid UTF-8 (byte " + std::to_string(*bad) + ")");
  std::vector<std::int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  for (const Split& s : split_added(text, false)) {
    if (s.token)
      ids.push_back(*s.token);
    else
      encode_text(std::string(text.substr(s.begin, s.end - s.begin)), s.begin == 0, ids);
  }
  return ids;
}

std::string HfTokenizer::decode(std::span<const std::int32_t> ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const std::int32_t id : ids) {
    if (const auto it = added_by_id_.find(id); it != added_by_id_.end()) {
      const AddedToken& token = added_[it->second];
      // A normalized token decodes to its normalised form, as in tokenizers.
      if (!(skip_special_tokens && token.special)) tokens.push_back(token.match);
    } else if (const std::string* token = model_.token(id)) {
      tokens.push_back(*token);
    }
  }
  return decoder_.apply(std::move(tokens));
}

}  // namespace zerolora
