// A compiled Unicode regular expression (PCRE2, UTF + UCP, JIT-compiled where the platform
// allows), and the split of a text by a pattern with Hugging Face tokenizers' delimiter
// behaviours. Patterns are the ones tokenizer.json files carry, written for Oniguruma: the
// constructs they use — \p{..} classes, (?i:..), lookahead, possessive-free quantifiers —
// mean the same in PCRE2, and the classes on which the two engines' tables disagree are
// rewritten first (oniguruma_classes.hpp).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace zerolora {

class TextRegex {
 public:
  // literal: the pattern is a plain string to find, not a regular expression.
  // Throws FormatError naming the pattern when it does not compile.
  TextRegex(std::string_view pattern, bool literal);
  ~TextRegex();
  TextRegex(TextRegex&&) noexcept;
  TextRegex& operator=(TextRegex&&) noexcept;

  struct Span {
    std::size_t begin, end;
    bool is_match;
  };
  // The whole text as alternating non-matching and matching spans, left to right; matches are
  // leftmost and non-overlapping (an empty match advances by one character). text must be
  // well-formed UTF-8.
  std::vector<Span> find_matches(std::string_view text) const;

 private:
  struct Compiled;
  std::unique_ptr<Compiled> compiled_;
};

// Hugging Face tokenizers' SplitDelimiterBehavior.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
SplitBehavior parse_split_behavior(const std::string& name);  // "Isolated", ...; FormatError

// The pieces [begin, end) of a text split at the matching spans, by the behaviour; empty
// pieces are dropped. invert: the non-matching spans are the delimiters.
std::vector<std::pair<std::size_t, std::size_t>> split_spans(std::vector<TextRegex::Span> spans,
                                                             SplitBehavior behavior, bool invert);

}  // namespace zerolora
