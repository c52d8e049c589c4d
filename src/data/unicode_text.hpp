// UTF-8 text helpers for the tokenizer.json pipeline: validation, code point stepping, and
// Unicode normalisation forms and case mapping through utf8proc (Debian's libutf8proc), so that
// no Unicode table is written by hand here.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace zerolora {

// Byte offset of the first byte that is not part of well-formed UTF-8 (overlong forms,
// surrogates and code points past U+10FFFF count as ill-formed), or nullopt.
std::optional<std::size_t> first_invalid_utf8(std::string_view text);

// Length in bytes of the UTF-8 sequence starting at text[at] (text is known well-formed).
std::size_t utf8_length_at(std::string_view text, std::size_t at);

// The code point starting at text[at] (text is known well-formed).
char32_t utf8_decode_at(std::string_view text, std::size_t at);

void append_utf8(std::string& out, char32_t code_point);

// Where the code point that ends at text[end - 1] starts (end > 0; text well-formed).
std::size_t utf8_previous_start(std::string_view text, std::size_t end);

// text without the code points `is_space` holds for at its start (left) and end (right).
std::string_view trim_unicode(std::string_view text, bool left, bool right,
                              bool (*is_space)(char32_t));

// A closed range of code points, as the tables tools/make_unicode_tables.py generates list them.
struct CodePointRange {
  char32_t first, last;
};
// Whether c lies in one of `ranges` (sorted, disjoint).
bool in_ranges(std::span<const CodePointRange> ranges, char32_t c);
// Byte offset of the first code point at or after byte `from` of text (well-formed) that lies
// in one of `ranges` (sorted, disjoint), or npos. Bytes below the lowest range's lead byte are
// passed over without decoding.
std::size_t find_in_ranges(std::string_view text, std::size_t from,
                           std::span<const CodePointRange> ranges);

// Normalisation forms as Hugging Face tokenizers' normalisers make them: utf8proc's, except
// that the code points tokenizers' older tables do not know (unicode_text_delta.inc) stay as
// they are, as tokenizers leaves an unassigned one. Throws FormatError when text is not
// well-formed UTF-8.
enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };
std::string normalize_unicode(std::string_view text, NormalForm form);
// Each code point lowercased as Rust's char::to_lowercase (tokenizers' Lowercase) does.
std::string lowercase_unicode(std::string_view text);

// Unicode White_Space, as Rust's char::is_whitespace (what Hugging Face tokenizers uses).
bool is_unicode_whitespace(char32_t c);

}  // namespace zerolora
