#define PCRE2_CODE_UNIT_WIDTH 8
#include "data/text_regex.hpp"

#include <pcre2.h>

#include <algorithm>

#include "core/error.hpp"
#include "data/unicode_text.hpp"

namespace zerolora {

struct TextRegex::Compiled {
  pcre2_code* code = nullptr;
  ~Compiled() { pcre2_code_free(code); }
};

namespace {

// Oniguruma's \s (what tokenizer.json patterns were written for) is Unicode White_Space;
// PCRE2's also takes U+180E. Spelled out, the two agree.
std::string with_unicode_space(std::string_view pattern) {
  std::string out;
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i] == '\\' && i + 1 < pattern.size()) {
      const char next = pattern[++i];
      if (next == 's')
        out += "\\p{White_Space}";
      else if (next == 'S')
        out += "\\P{White_Space}";
      else
        (out += '\\') += next;
      continue;
    }
    out += pattern[i];
  }
  return out;
}

}  // namespace

TextRegex::TextRegex(std::string_view given, bool literal)
    : compiled_(std::make_unique<Compiled>()) {
  const std::string rewritten = literal ? std::string(given) : with_unicode_space(given);
  const std::string_view pattern = rewritten;
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  // PCRE2_LITERAL admits no UCP (nor needs it).
  const std::uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  compiled_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                  options, &error, &error_offset, nullptr);
  if (!compiled_->code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    throw FormatError("regular expression '" + std::string(given) + "' does not compile at " +
                      std::to_string(error_offset) + ": " + reinterpret_cast<const char*>(message));
  }
  // JIT is an optimisation: where the platform lacks it, the interpreter gives the same result.
  pcre2_jit_compile(compiled_->code, PCRE2_JIT_COMPLETE);
}

TextRegex::~TextRegex() = default;
TextRegex::TextRegex(TextRegex&&) noexcept = default;
TextRegex& TextRegex::operator=(TextRegex&&) noexcept = default;

std::vector<TextRegex::Span> TextRegex::find_matches(std::string_view text) const {
  std::vector<Span> spans;
  if (text.empty()) return spans;
  // Match data per call: one TextRegex serves many threads at once.
  const std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(
      pcre2_match_data_create_from_pattern(compiled_->code, nullptr), &pcre2_match_data_free);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  std::size_t previous = 0, at = 0;
  bool matched = false;  // an empty match right where the previous one ended is skipped
  while (at <= text.size()) {
    const int rc = pcre2_match(compiled_->code, subject, text.size(), at, PCRE2_NO_UTF_CHECK,
                               match.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof message);
      throw FormatError(std::string("regular expression match failed: ") +
                        reinterpret_cast<const char*>(message));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match.get());
    const std::size_t begin = ovector[0], end = ovector[1];
    if (begin == end && matched && begin == previous) {  // as Oniguruma's search does
      if (end >= text.size()) break;
      at = end + utf8_length_at(text, end);
      continue;
    }
    matched = true;
    if (begin != previous) spans.push_back({previous, begin, false});
    spans.push_back({begin, end, true});
    previous = end;
    if (end == begin) {
      if (end >= text.size()) break;
      at = end + utf8_length_at(text, end);
    } else {
      at = end;
    }
  }
  if (previous != text.size()) spans.push_back({previous, text.size(), false});
  return spans;
}

SplitBehavior parse_split_behavior(const std::string& name) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  throw FormatError("unknown split behavior '" + name + "'");
}

std::vector<std::pair<std::size_t, std::size_t>> split_spans(std::vector<TextRegex::Span> spans,
                                                             SplitBehavior behavior, bool invert) {
  if (invert)
    for (auto& s : spans) s.is_match = !s.is_match;
  // Each kept piece with whether it is dropped, as tokenizers' NormalizedString::split does.
  struct Piece {
    std::size_t begin, end;
    bool removed;
  };
  std::vector<Piece> pieces;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const auto& s : spans) pieces.push_back({s.begin, s.end, false});
      break;
    case SplitBehavior::kRemoved:
      for (const auto& s : spans) pieces.push_back({s.begin, s.end, s.is_match});
      break;
    case SplitBehavior::kContiguous:
      for (const auto& s : spans) {
        if (s.is_match == previous_match && !pieces.empty())
          pieces.back().end = s.end;
        else
          pieces.push_back({s.begin, s.end, false});
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const auto& s : spans) {
        if (s.is_match && !previous_match && !pieces.empty())
          pieces.back().end = s.end;
        else
          pieces.push_back({s.begin, s.end, false});
        previous_match = s.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto s = spans.rbegin(); s != spans.rend(); ++s) {
        if (s->is_match && !previous_match && !pieces.empty())
          pieces.back().begin = s->begin;
        else
          pieces.push_back({s->begin, s->end, false});
        previous_match = s->is_match;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
  }
  std::vector<std::pair<std::size_t, std::size_t>> out;
  for (const auto& p : pieces)
    if (!p.removed && p.end > p.begin) out.emplace_back(p.begin, p.end);
  return out;
}

}  // namespace zerolora
