#define PCRE2_CODE_UNIT_WIDTH 8
#include "data/oniguruma_classes.hpp"

#include <pcre2.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "data/unicode_text.hpp"

namespace zerolora {
namespace {

struct ClassDelta {
  std::string_view name;  // a general category, or "w" / "d" for \w / \d
  std::span<const CodePointRange> differ;
};
#include "data/unicode_class_delta.inc"

// A property name as both engines read it: case, spaces, '-' and '_' ignored (\p{l},
// \p{White Space}).
std::string loose(std::string_view name) {
  std::string out;
  for (const char c : name)
    if (c != ' ' && c != '-' && c != '_')
      out += static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return out;
}

// The table's entry for a class name as written, if the table applies and lists it.
const ClassDelta* listed_class(std::string_view written) {
  if (!oniguruma_class_table_applies()) return nullptr;
  const std::string name = loose(written);
  for (const auto& d : kClassDeltas)
    if (loose(d.name) == name) return &d;
  return nullptr;
}

// One code point tested against a class on its own (the item alone, or the class's items
// that the table does not list), with the linked PCRE2's tables.
class CodePointMatcher {
 public:
  explicit CodePointMatcher(const std::string& single_class) {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(single_class.data()),
                              single_class.size(), PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &error,
                              &offset, nullptr));
    if (code_) match_.reset(pcre2_match_data_create_from_pattern(code_.get(), nullptr));
  }
  // Not where the class is not one PCRE2 takes: then neither does it take the pattern, and
  // compiling that names the pattern.
  bool valid() const { return code_ && match_; }
  bool operator()(char32_t c) const {
    std::string text;
    append_utf8(text, c);
    return pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0,
                       PCRE2_NO_UTF_CHECK, match_.get(), nullptr) > 0;
  }

 private:
  std::unique_ptr<pcre2_code, decltype(&pcre2_code_free)> code_{nullptr, &pcre2_code_free};
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match_{
      nullptr, &pcre2_match_data_free};
};

// An escape at pattern[at] == '\\': its text as PCRE2 is given it, and the table's entry for
// the class it is, if any.
struct Escape {
  std::string text;
  std::size_t length = 0;
  // Where the table says the engines disagree on it; empty: not a class the table lists.
  std::span<const CodePointRange> differ;
};

Escape read_escape(std::string_view p, std::size_t at) {
  Escape e;
  std::string_view name;  // the class it names, if any
  const bool last = at + 1 >= p.size();
  const char next = last ? '\\' : p[at + 1];
  e.length = last ? 1 : 2;
  if (last) {
    // a pattern that ends in '\': PCRE2 reports it
  } else if (next == 'w' || next == 'W' || next == 'd' || next == 'D') {
    name = (next == 'w' || next == 'W') ? "w" : "d";
  } else if ((next == 'p' || next == 'P') && at + 2 < p.size()) {
    name = p.substr(at + 2, 1);  // \pL
    if (p[at + 2] == '{') {
      const std::size_t close = p.find('}', at + 3);
      name =
          close == std::string_view::npos ? std::string_view{} : p.substr(at + 3, close - at - 3);
      e.length = close == std::string_view::npos ? 2 : close + 1 - at;
    } else {
      e.length = 3;
    }
    if (!name.empty() && name.front() == '^') name.remove_prefix(1);
  } else if (next == 'Q') {  // quoted to \E, verbatim
    const std::size_t end = p.find("\\E", at + 2);
    e.length = (end == std::string_view::npos ? p.size() : end + 2) - at;
  } else if (next == 'c' && at + 2 < p.size()) {  // \cX: X may be '[' or '\'
    e.length = 3;
  }
  if (!last && next == 's')
    e.text = "\\p{White_Space}";
  else if (!last && next == 'S')
    e.text = "\\P{White_Space}";
  else
    e.text = std::string(p.substr(at, e.length));
  if (const ClassDelta* listed = name.empty() ? nullptr : listed_class(name))
    e.differ = listed->differ;
  return e;
}

// A character class as written (body: its items, \s spelled out), the items the table lists,
// and the rest of its items (as a class body of their own).
struct CharacterClass {
  std::string written;  // the whole class, as PCRE2 is given it without the table
  bool negated = false;
  std::string body;
  std::vector<std::pair<std::string, std::span<const CodePointRange>>> listed;  // text, differ
  std::string rest;
};

// Sorted code points (repeats allowed) as the fewest ranges.
std::vector<CodePointRange> coalesced(const std::vector<char32_t>& points) {
  std::vector<CodePointRange> ranges;
  for (const char32_t c : points) {
    if (!ranges.empty() && c <= ranges.back().last + 1)
      ranges.back().last = std::max(ranges.back().last, c);
    else
      ranges.push_back({c, c});
  }
  return ranges;
}

// Sorted code points as class items: \x{A} or \x{A}-\x{B}.
std::string as_ranges(const std::vector<char32_t>& points) {
  std::string out;
  char buffer[32];
  for (const auto& r : coalesced(points)) {
    if (r.first == r.last)
      std::snprintf(buffer, sizeof buffer, "\\x{%X}", static_cast<unsigned>(r.first));
    else
      std::snprintf(buffer, sizeof buffer, "\\x{%X}-\\x{%X}", static_cast<unsigned>(r.first),
                    static_cast<unsigned>(r.last));
    out += buffer;
  }
  return out;
}

// The class as Oniguruma's tables have it: where the table says the engines disagree on one
// of its listed items, each such code point is asked of PCRE2 (every item) and the answer for
// Oniguruma follows (a listed item's flipped), and the code points whose answers differ are
// added to the class or taken out of it (and to `differ`).
std::string rewritten(const CharacterClass& k, std::vector<char32_t>& differ) {
  if (k.listed.empty()) return k.written;
  std::vector<char32_t> candidates;
  std::vector<CodePointMatcher> items;
  std::vector<std::span<const CodePointRange>> deltas;
  for (const auto& [text, differ_here] : k.listed) {
    items.emplace_back("[" + text + "]");
    deltas.push_back(differ_here);
    for (const auto& r : deltas.back())
      for (char32_t c = r.first; c <= r.last; ++c) candidates.push_back(c);
  }
  std::sort(candidates.begin(), candidates.end());
  candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());
  std::optional<CodePointMatcher> rest;
  if (!k.rest.empty()) rest.emplace("[" + k.rest + "]");
  if ((rest && !rest->valid()) ||
      std::any_of(items.begin(), items.end(), [](const auto& m) { return !m.valid(); }))
    return k.written;
  std::vector<char32_t> add, remove;
  for (const char32_t c : candidates) {
    bool pcre2 = rest && (*rest)(c);
    bool oniguruma = pcre2;
    for (std::size_t i = 0; i < items.size(); ++i) {
      const bool here = items[i](c);
      pcre2 = pcre2 || here;
      oniguruma = oniguruma || (here != in_ranges(deltas[i], c));
    }
    if (k.negated) pcre2 = !pcre2, oniguruma = !oniguruma;
    if (oniguruma && !pcre2) add.push_back(c);
    if (pcre2 && !oniguruma) remove.push_back(c);
    if (oniguruma != pcre2) differ.push_back(c);
  }
  if (add.empty() && remove.empty()) return k.written;
  // The ranges go last (PCRE2 tries a class's items in order: the body's \p{..} first), after
  // a body whose closing '-' read_class escaped.
  if (!k.negated) {
    const std::string inner = "[" + k.body + as_ranges(add) + "]";
    return remove.empty() ? inner : "(?:(?![" + as_ranges(remove) + "])" + inner + ")";
  }
  const std::string inner = "[^" + k.body + as_ranges(remove) + "]";
  return add.empty() ? inner : "(?:" + inner + "|[" + as_ranges(add) + "])";
}

// The length of a POSIX class ([:alpha:], [:^digit:]) at p[at], or 0 where there is none (a
// '[' that is a literal, as PCRE2 reads it).
std::size_t posix_class_length(std::string_view p, std::size_t at) {
  if (p.compare(at, 2, "[:") != 0) return 0;
  std::size_t i = at + 2;
  if (i < p.size() && p[i] == '^') ++i;
  const std::size_t name = i;
  while (i < p.size() && ((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z'))) ++i;
  return i > name && p.compare(i, 2, ":]") == 0 ? i + 2 - at : 0;
}

// The class that opens at p[at] == '['; sets `length`, or leaves it 0 where the class does
// not close (PCRE2 then reports the pattern).
CharacterClass read_class(std::string_view p, std::size_t at, std::size_t& length) {
  CharacterClass k;
  std::size_t i = at + 1;
  if (i < p.size() && p[i] == '^') k.negated = true, ++i;
  length = 0;
  bool first = true, after_listed = false;
  while (i < p.size()) {
    const char c = p[i];
    if (c == ']' && !first) {
      length = i + 1 - at;
      k.written = std::string(k.negated ? "[^" : "[") + k.body + "]";
      return k;
    }
    if (c == '\\') {
      const Escape e = read_escape(p, i);
      k.body += e.text;
      if (!e.differ.empty()) {
        k.listed.emplace_back(e.text, e.differ);
      } else {
        k.rest += e.text;
      }
      after_listed = !e.differ.empty();
      i += e.length;
    } else if (const std::size_t posix = posix_class_length(p, i)) {  // [:alpha:]
      k.body += p.substr(i, posix);
      k.rest += p.substr(i, posix);
      after_listed = false;
      i += posix;
    } else {
      // A leading ']' or '-', a closing '-' and a '-' after a listed item are literals:
      // escaped, so that neither the ranges put after the body nor the rest's new neighbours
      // change them (nor a '^' that opens the rest).
      const bool closing = i + 1 < p.size() && p[i + 1] == ']';
      const bool literal =
          (first && (c == ']' || c == '-')) || (c == '-' && (after_listed || closing));
      const std::string text = literal ? std::string("\\") + c : std::string(1, c);
      k.body += text;
      k.rest += c == '^' ? std::string("\\^") : text;
      after_listed = false;
      ++i;
    }
    first = false;
  }
  return k;
}

}  // namespace

std::string pcre2_unicode_version() {
  char version[64] = {};
  pcre2_config(PCRE2_CONFIG_UNICODE_VERSION, version);
  return version;
}

std::string_view rust_numeric_class() {
  return kRustNumericClass;
}
std::string_view rust_punctuation_class() {
  return kRustPunctuationClass;
}

bool oniguruma_class_table_applies() {
  return pcre2_unicode_version() == kDeltaPcre2UnicodeVersion;
}

PatternForPcre2 pattern_for_pcre2(std::string_view p) {
  PatternForPcre2 out;
  std::vector<char32_t> differ;
  auto add = [&](const CharacterClass& k) {
    out.plain += k.written;
    out.exact += rewritten(k, differ);
  };
  for (std::size_t i = 0; i < p.size();) {
    if (p[i] == '\\') {
      const Escape e = read_escape(p, i);
      CharacterClass k;
      k.written = k.body = e.text;
      if (!e.differ.empty()) k.listed.emplace_back(e.text, e.differ);
      add(k);
      i += e.length;
    } else if (p.compare(i, 3, "(?#") == 0) {  // a comment, to its ')'
      const std::size_t close = p.find(')', i);
      const std::size_t end = close == std::string_view::npos ? p.size() : close + 1;
      out.plain += p.substr(i, end - i);
      out.exact += p.substr(i, end - i);
      i = end;
    } else if (p[i] == '[') {
      std::size_t length = 0;
      const CharacterClass k = read_class(p, i, length);
      if (length == 0) {  // PCRE2 reports it
        out.plain += p.substr(i);
        out.exact += p.substr(i);
        break;
      }
      add(k);
      i += length;
    } else {
      out.plain += p[i];
      out.exact += p[i++];
    }
  }
  std::sort(differ.begin(), differ.end());
  out.differ = coalesced(differ);
  return out;
}

}  // namespace zerolora
