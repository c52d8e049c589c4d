#include "data/hf_text_steps.hpp"

#include <array>
#include <nlohmann/json.hpp>
#include <optional>

#include "core/error.hpp"
#include "data/oniguruma_classes.hpp"
#include "data/text_regex.hpp"
#include "data/unicode_text.hpp"

namespace zerolora {
namespace {

// GPT-2's pre-tokenisation regex, used by ByteLevel when use_regex is true.
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

constexpr bool printable_byte(int b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}
// Byte b -> its character: itself when printable, else 256 + (its rank among the others).
constexpr std::array<char32_t, 256> make_byte_chars() {
  std::array<char32_t, 256> chars{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) chars[static_cast<std::size_t>(b)] = printable_byte(b) ? b : next++;
  return chars;
}
constexpr std::array<char32_t, 256> kByteChars = make_byte_chars();
constexpr std::array<std::int16_t, 324> make_char_bytes() {
  std::array<std::int16_t, 324> bytes{};
  for (auto& b : bytes) b = -1;
  for (int b = 0; b < 256; ++b)
    bytes[kByteChars[static_cast<std::size_t>(b)]] = static_cast<std::int16_t>(b);
  return bytes;
}
constexpr std::array<std::int16_t, 324> kCharBytes = make_char_bytes();

std::string unsupported_where(const std::string& where, const char* what, const std::string& type) {
  return where + ": " + what + " '" + type + "' is not supported";
}

std::unique_ptr<TextRegex> parse_pattern(const nlohmann::json& p, const std::string& where) {
  if (p.contains("String"))
    return std::make_unique<TextRegex>(p["String"].get<std::string>(), true);
  if (p.contains("Regex")) return std::make_unique<TextRegex>(p["Regex"].get<std::string>(), false);
  throw FormatError(where + ": pattern " + p.dump() + " is neither {\"String\"} nor {\"Regex\"}");
}

std::string replace_all(const TextRegex& pattern, std::string_view text, std::string_view content) {
  std::string out;
  for (const auto& span : pattern.find_matches(text)) {
    if (span.is_match)
      out += content;
    else
      out += text.substr(span.begin, span.end - span.begin);
  }
  return out;
}

// Steps of a Sequence (any depth) flattened, each passed to `add`.
template <typename Add>
void for_each_step(const nlohmann::json& spec, const char* list_key, Add&& add) {
  if (spec.is_null()) return;
  if (spec.value("type", "") == "Sequence") {
    for (const auto& s : spec.at(list_key)) for_each_step(s, list_key, add);
    return;
  }
  add(spec);
}

enum class Prepend { kAlways, kFirst, kNever };
Prepend metaspace_prepend(const nlohmann::json& spec, const std::string& where) {
  if (spec.contains("prepend_scheme")) {
    const auto scheme = spec["prepend_scheme"].get<std::string>();
    if (scheme == "always") return Prepend::kAlways;
    if (scheme == "first") return Prepend::kFirst;
    if (scheme == "never") return Prepend::kNever;
    throw FormatError(where + ": unknown Metaspace prepend_scheme '" + scheme + "'");
  }
  return spec.value("add_prefix_space", true) ? Prepend::kAlways : Prepend::kNever;
}

}  // namespace

std::string byte_level_encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) append_utf8(out, kByteChars[static_cast<unsigned char>(c)]);
  return out;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  const std::size_t n = bytes.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned char c = s[i];
    // The length of a well-formed sequence led by c, and the allowed range of its second byte
    // (Unicode table 3-7); continuation bytes after the second are 80..BF.
    std::size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80)
      len = 1;
    else if (c >= 0xC2 && c <= 0xDF)
      len = 2;
    else if (c == 0xE0)
      len = 3, lo = 0xA0;
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
      len = 3;
    else if (c == 0xED)
      len = 3, hi = 0x9F;
    else if (c == 0xF0)
      len = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3)
      len = 4;
    else if (c == 0xF4)
      len = 4, hi = 0x8F;
    std::size_t good = len == 0 ? 0 : 1;
    while (good < len && i + good < n) {
      const unsigned char b = s[i + good];
      const bool ok = good == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
      if (!ok) break;
      ++good;
    }
    if (len != 0 && good == len) {
      out.append(bytes.substr(i, len));
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      i += std::max<std::size_t>(good, 1);
    }
  }
  return out;
}

// ---- normalizer -----------------------------------------------------------------------------

struct HfNormalizer::Step {
  enum class Kind { kUnicode, kLowercase, kPrepend, kReplace, kStrip } kind;
  NormalForm form = NormalForm::kNfc;
  std::string text;  // Prepend's prefix, Replace's content
  std::unique_ptr<TextRegex> pattern;
  bool left = false, right = false;
};

HfNormalizer::HfNormalizer(const nlohmann::json& spec, const std::string& where) {
  for_each_step(spec, "normalizers", [&](const nlohmann::json& s) {
    const std::string type = s.at("type").get<std::string>();
    Step step{};
    if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
      step.kind = Step::Kind::kUnicode;
      step.form = type == "NFC"    ? NormalForm::kNfc
                  : type == "NFD"  ? NormalForm::kNfd
                  : type == "NFKC" ? NormalForm::kNfkc
                                   : NormalForm::kNfkd;
    } else if (type == "Lowercase") {
      step.kind = Step::Kind::kLowercase;
    } else if (type == "Prepend") {
      step.kind = Step::Kind::kPrepend;
      step.text = s.at("prepend").get<std::string>();
    } else if (type == "Replace") {
      step.kind = Step::Kind::kReplace;
      step.pattern = parse_pattern(s.at("pattern"), where);
      step.text = s.at("content").get<std::string>();
    } else if (type == "Strip") {
      step.kind = Step::Kind::kStrip;
      step.left = s.value("strip_left", false);
      step.right = s.value("strip_right", false);
    } else {
      throw UnsupportedError(unsupported_where(where, "normalizer", type));
    }
    steps_.push_back(std::move(step));
  });
}
HfNormalizer::~HfNormalizer() = default;
HfNormalizer::HfNormalizer(HfNormalizer&&) noexcept = default;

bool HfNormalizer::identity() const {
  return steps_.empty();
}

std::string HfNormalizer::apply(std::string text) const {
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Step::Kind::kUnicode:
        text = normalize_unicode(text, step.form);
        break;
      case Step::Kind::kLowercase:
        text = lowercase_unicode(text);
        break;
      case Step::Kind::kPrepend:
        if (!text.empty()) text = step.text + text;
        break;
      case Step::Kind::kReplace:
        text = replace_all(*step.pattern, text, step.text);
        break;
      case Step::Kind::kStrip:
        text = std::string(trim_unicode(text, step.left, step.right, is_unicode_whitespace));
        break;
    }
  }
  return text;
}

// ---- pre-tokenizer --------------------------------------------------------------------------

struct HfPreTokenizer::Step {
  enum class Kind { kSplit, kByteLevel, kMetaspace } kind;
  std::unique_ptr<TextRegex> pattern;  // Split's, ByteLevel's GPT-2 regex, Metaspace's split
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;  // ByteLevel
  std::string replacement;        // Metaspace
  Prepend prepend = Prepend::kAlways;
  bool split = true;
};

HfPreTokenizer::HfPreTokenizer(const nlohmann::json& spec, const std::string& where) {
  auto split_step = [](std::string_view regex, SplitBehavior behavior, bool invert) {
    Step step{};
    step.kind = Step::Kind::kSplit;
    step.pattern = std::make_unique<TextRegex>(regex, false);
    step.behavior = behavior;
    step.invert = invert;
    return step;
  };
  for_each_step(spec, "pretokenizers", [&](const nlohmann::json& s) {
    const std::string type = s.at("type").get<std::string>();
    if (type == "Split") {
      Step step{};
      step.kind = Step::Kind::kSplit;
      step.pattern = parse_pattern(s.at("pattern"), where);
      step.behavior = parse_split_behavior(s.at("behavior").get<std::string>());
      step.invert = s.value("invert", false);
      steps_.push_back(std::move(step));
    } else if (type == "ByteLevel") {
      Step step{};
      step.kind = Step::Kind::kByteLevel;
      step.add_prefix_space = s.value("add_prefix_space", true);
      if (s.value("use_regex", true))
        step.pattern = std::make_unique<TextRegex>(kGpt2Pattern, false);
      steps_.push_back(std::move(step));
    } else if (type == "Metaspace") {
      Step step{};
      step.kind = Step::Kind::kMetaspace;
      step.replacement = s.value("replacement", std::string("\xE2\x96\x81"));
      step.prepend = metaspace_prepend(s, where);
      step.split = s.value("split", true);
      if (step.split) step.pattern = std::make_unique<TextRegex>(step.replacement, true);
      steps_.push_back(std::move(step));
    } else if (type == "Digits") {
      // Rust's char::is_numeric, as tokenizers' Digits runs it.
      const std::string digit(rust_numeric_class());
      steps_.push_back(
          split_step(s.value("individual_digits", false) ? digit : "(?:" + digit + ")+",
                     SplitBehavior::kIsolated, false));
    } else if (type == "Whitespace") {
      // Rust's \w: Alphabetic, marks, decimal digits, connector punctuation, joiners.
      steps_.push_back(split_step(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]+|)"
                                  R"([^\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}\s]+)",
                                  SplitBehavior::kRemoved, true));
    } else if (type == "WhitespaceSplit") {
      steps_.push_back(split_step(R"(\s)", SplitBehavior::kRemoved, false));
    } else if (type == "Punctuation") {
      // ASCII's punctuation and the unicode_categories crate's, as tokenizers' runs them.
      steps_.push_back(
          split_step(rust_punctuation_class(),
                     parse_split_behavior(s.value("behavior", std::string("Isolated"))), false));
    } else {
      throw UnsupportedError(unsupported_where(where, "pre_tokenizer", type));
    }
  });
}
HfPreTokenizer::~HfPreTokenizer() = default;
HfPreTokenizer::HfPreTokenizer(HfPreTokenizer&&) noexcept = default;

std::vector<TextPiece> HfPreTokenizer::apply(TextPiece piece) const {
  std::vector<TextPiece> pieces;
  pieces.push_back(std::move(piece));
  std::vector<TextPiece> next;
  auto split_into = [&next](const TextPiece& p, const TextRegex& pattern, SplitBehavior behavior,
                            bool invert) {
    for (const auto& [begin, end] : split_spans(pattern.find_matches(p.text), behavior, invert))
      next.push_back({p.text.substr(begin, end - begin), p.at_start && begin == 0});
  };
  for (const Step& step : steps_) {
    next.clear();
    for (TextPiece& p : pieces) {
      switch (step.kind) {
        case Step::Kind::kSplit:
          split_into(p, *step.pattern, step.behavior, step.invert);
          break;
        case Step::Kind::kByteLevel: {
          if (step.add_prefix_space && (p.text.empty() || p.text[0] != ' ')) p.text = ' ' + p.text;
          const std::size_t first = next.size();
          if (step.pattern)
            split_into(p, *step.pattern, SplitBehavior::kIsolated, false);
          else if (!p.text.empty())
            next.push_back(std::move(p));
          for (std::size_t i = first; i < next.size(); ++i)
            next[i].text = byte_level_encode(next[i].text);
          break;
        }
        case Step::Kind::kMetaspace: {
          std::string text;
          for (char c : p.text) {
            if (c == ' ')
              text += step.replacement;
            else
              text += c;
          }
          const bool starts = text.compare(0, step.replacement.size(), step.replacement) == 0;
          if (!starts &&
              (step.prepend == Prepend::kAlways || (step.prepend == Prepend::kFirst && p.at_start)))
            text.insert(0, step.replacement);
          if (!step.split) {
            if (!text.empty()) next.push_back({std::move(text), p.at_start});
            break;
          }
          const TextPiece replaced{std::move(text), p.at_start};
          split_into(replaced, *step.pattern, SplitBehavior::kMergedWithNext, false);
          break;
        }
      }
    }
    pieces.swap(next);
  }
  return pieces;
}

// ---- decoder --------------------------------------------------------------------------------

struct HfDecoder::Step {
  enum class Kind { kByteLevel, kMetaspace, kReplace, kByteFallback, kFuse, kStrip } kind;
  std::unique_ptr<TextRegex> pattern;
  std::string text;  // Replace's content, Metaspace's replacement, Strip's character
  Prepend prepend = Prepend::kAlways;
  std::size_t start = 0, stop = 0;
};

HfDecoder::HfDecoder(const nlohmann::json& spec, const std::string& where) {
  for_each_step(spec, "decoders", [&](const nlohmann::json& s) {
    const std::string type = s.at("type").get<std::string>();
    Step step{};
    if (type == "ByteLevel") {
      step.kind = Step::Kind::kByteLevel;
    } else if (type == "Metaspace") {
      step.kind = Step::Kind::kMetaspace;
      step.text = s.value("replacement", std::string("\xE2\x96\x81"));
      step.prepend = metaspace_prepend(s, where);
    } else if (type == "Replace") {
      step.kind = Step::Kind::kReplace;
      step.pattern = parse_pattern(s.at("pattern"), where);
      step.text = s.at("content").get<std::string>();
    } else if (type == "ByteFallback") {
      step.kind = Step::Kind::kByteFallback;
    } else if (type == "Fuse") {
      step.kind = Step::Kind::kFuse;
    } else if (type == "Strip") {
      step.kind = Step::Kind::kStrip;
      step.text = s.at("content").get<std::string>();
      step.start = s.value("start", std::size_t{0});
      step.stop = s.value("stop", std::size_t{0});
    } else {
      throw UnsupportedError(unsupported_where(where, "decoder", type));
    }
    steps_.push_back(std::move(step));
  });
}
HfDecoder::~HfDecoder() = default;
HfDecoder::HfDecoder(HfDecoder&&) noexcept = default;

namespace {

std::optional<unsigned char> byte_token(std::string_view token) {
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return std::nullopt;
  unsigned value = 0;
  for (char c : token.substr(3, 2)) {
    value <<= 4;
    if (c >= '0' && c <= '9')
      value |= static_cast<unsigned>(c - '0');
    else if (c >= 'A' && c <= 'F')
      value |= static_cast<unsigned>(c - 'A' + 10);
    else if (c >= 'a' && c <= 'f')
      value |= static_cast<unsigned>(c - 'a' + 10);
    else
      return std::nullopt;
  }
  return static_cast<unsigned char>(value);
}

}  // namespace

std::string HfDecoder::apply(std::vector<std::string> tokens) const {
  if (steps_.empty()) {  // no decoder: tokenizers joins the tokens with spaces
    std::string text;
    for (std::size_t i = 0; i < tokens.size(); ++i) (text += i ? " " : "") += tokens[i];
    return text;
  }
  for (const Step& step : steps_) {
    switch (step.kind) {
      case Step::Kind::kByteLevel: {
        // A token made only of byte-level characters gives its bytes; any other token (an
        // added token, say) its own text.
        std::string bytes;
        for (const auto& t : tokens) {
          std::string mapped;
          bool all = true;
          for (std::size_t i = 0; i < t.size() && all; i += utf8_length_at(t, i)) {
            const char32_t c = utf8_decode_at(t, i);
            all = c < kCharBytes.size() && kCharBytes[c] >= 0;
            if (all) mapped += static_cast<char>(kCharBytes[c]);
          }
          bytes += all ? mapped : t;
        }
        tokens = {utf8_lossy(bytes)};
        break;
      }
      case Step::Kind::kMetaspace:
        for (std::size_t i = 0; i < tokens.size(); ++i) {
          std::string out;
          const std::string& t = tokens[i];
          // As tokenizers does: in the first token every replacement character is dropped (not
          // only a leading one), unless the scheme never prepends.
          const bool drop = i == 0 && step.prepend != Prepend::kNever;
          for (std::size_t at = 0; at < t.size();) {
            if (t.compare(at, step.text.size(), step.text) == 0) {
              if (!drop) out += ' ';
              at += step.text.size();
            } else {
              out += t[at++];
            }
          }
          tokens[i] = std::move(out);
        }
        break;
      case Step::Kind::kReplace:
        for (auto& t : tokens) t = replace_all(*step.pattern, t, step.text);
        break;
      case Step::Kind::kByteFallback: {
        std::vector<std::string> out;
        std::string pending;
        std::size_t pending_count = 0;
        auto flush = [&] {
          if (pending_count == 0) return;
          if (first_invalid_utf8(pending)) {  // one U+FFFD token per byte
            for (std::size_t k = 0; k < pending_count; ++k) out.emplace_back("\xEF\xBF\xBD");
          } else {
            out.push_back(pending);
          }
          pending.clear();
          pending_count = 0;
        };
        for (auto& t : tokens) {
          if (const auto b = byte_token(t)) {
            pending += static_cast<char>(*b);
            ++pending_count;
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens = std::move(out);
        break;
      }
      case Step::Kind::kFuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        tokens = {std::move(all)};
        break;
      }
      case Step::Kind::kStrip:
        for (auto& t : tokens) {
          std::size_t begin = 0, end = t.size();
          for (std::size_t k = 0;
               k < step.start && t.compare(begin, step.text.size(), step.text) == 0; ++k)
            begin += step.text.size();
          for (std::size_t k = 0;
               k < step.stop && end >= begin + step.text.size() &&
               t.compare(end - step.text.size(), step.text.size(), step.text) == 0;
               ++k)
            end -= step.text.size();
          t = t.substr(begin, end - begin);
        }
        break;
    }
  }
  std::string text;
  for (const auto& t : tokens) text += t;
  return text;
}

}  // namespace zerolora
