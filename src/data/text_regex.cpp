#define PCRE2_CODE_UNIT_WIDTH 8
#include "data/text_regex.hpp"

#include <pcre2.h>

#include <algorithm>
#include <vector>

#include "core/error.hpp"
#include "data/oniguruma_classes.hpp"
#include "data/unicode_text.hpp"

namespace zerolora {

struct TextRegex::Compiled {
  // As PCRE2's tables have the classes, and as Oniguruma's (null where the same); the second
  // serves the texts with a code point of `differ`.
  pcre2_code* plain = nullptr;
  pcre2_code* exact = nullptr;
  std::vector<CodePointRange> differ;
  ~Compiled() {
    pcre2_code_free(plain);
    pcre2_code_free(exact);
  }
};

namespace {

pcre2_code* try_compile(std::string_view pattern, bool literal, int& error,
                        PCRE2_SIZE& error_offset) {
  // PCRE2_LITERAL admits no UCP (nor needs it).
  const std::uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   options, &error, &error_offset, nullptr);
  // JIT is an optimisation: where the platform lacks it, the interpreter gives the same result.
  if (code) pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return code;
}

pcre2_code* compile(std::string_view pattern, bool literal, std::string_view given) {
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  pcre2_code* code = try_compile(pattern, literal, error, error_offset);
  if (!code) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    throw FormatError("regular expression '" + std::string(given) + "' does not compile" +
                      (pattern == given ? " at " + std::to_string(error_offset) : "") + ": " +
                      reinterpret_cast<const char*>(message));
  }
  return code;
}

}  // namespace

TextRegex::TextRegex(std::string_view given, bool literal)
    : compiled_(std::make_unique<Compiled>()) {
  if (literal) {
    compiled_->plain = compile(given, true, given);
    return;
  }
  const PatternForPcre2 pattern = pattern_for_pcre2(given);
  compiled_->plain = compile(pattern.plain, false, given);
  if (pattern.exact != pattern.plain) {
    // A pattern of many rewritten classes can pass PCRE2's size limit where the plain one does
    // not: the plain one then serves every text, as it did before the table.
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    compiled_->exact = try_compile(pattern.exact, false, error, error_offset);
    if (compiled_->exact) compiled_->differ = pattern.differ;
  }
}

TextRegex::~TextRegex() = default;
TextRegex::TextRegex(TextRegex&&) noexcept = default;
TextRegex& TextRegex::operator=(TextRegex&&) noexcept = default;

std::vector<TextRegex::Span> TextRegex::find_matches(std::string_view text) const {
  std::vector<Span> spans;
  if (text.empty()) return spans;
  const bool differs = find_in_ranges(text, 0, compiled_->differ) != std::string_view::npos;
  const pcre2_code* code = differs ? compiled_->exact : compiled_->plain;
  // Match data per call: one TextRegex serves many threads at once.
  const std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(
      pcre2_match_data_create_from_pattern(code, nullptr), &pcre2_match_data_free);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  std::size_t previous = 0, at = 0;
  bool matched = false;  // an empty match right where the previous one ended is skipped
  while (at <= text.size()) {
    const int rc =
        pcre2_match(code, subject, text.size(), at, PCRE2_NO_UTF_CHECK, match.get(), nullptr);
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
