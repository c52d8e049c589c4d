#include "data/unicode_text.hpp"

#include <utf8proc.h>

#include <algorithm>
#include <cstdlib>
#include <memory>

#include "core/error.hpp"

namespace zerolora {
namespace {

struct LowercaseException {
  char32_t code_point;
  const char* lowercase;  // UTF-8
};
#include "data/unicode_text_delta.inc"

std::string utf8proc_form(std::string_view text, NormalForm form) {
  if (text.empty()) return {};
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalForm::kNfc:
      options |= UTF8PROC_COMPOSE;
      break;
    case NormalForm::kNfd:
      options |= UTF8PROC_DECOMPOSE;
      break;
    case NormalForm::kNfkc:
      options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
      break;
    case NormalForm::kNfkd:
      options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
      break;
  }
  utf8proc_uint8_t* result = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                          static_cast<utf8proc_ssize_t>(text.size()), &result,
                                          static_cast<utf8proc_option_t>(options));
  if (n < 0) throw FormatError(std::string("cannot normalise text: ") + utf8proc_errmsg(n));
  const std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owned(result, &std::free);
  return std::string(reinterpret_cast<const char*>(result), static_cast<std::size_t>(n));
}

}  // namespace

bool in_ranges(std::span<const CodePointRange> ranges, char32_t c) {
  const auto it = std::upper_bound(ranges.begin(), ranges.end(), c,
                                   [](char32_t v, const CodePointRange& r) { return v < r.first; });
  return it != ranges.begin() && c <= std::prev(it)->last;
}

std::size_t find_in_ranges(std::string_view text, std::size_t from,
                           std::span<const CodePointRange> ranges) {
  if (ranges.empty()) return std::string_view::npos;
  // A code point's UTF-8 lead byte grows with it: none below the lowest's can be in a range.
  const char32_t lowest = ranges.front().first;
  const unsigned lead = lowest < 0x80      ? 0u
                        : lowest < 0x800   ? 0xC0u | (lowest >> 6)
                        : lowest < 0x10000 ? 0xE0u | (lowest >> 12)
                                           : 0xF0u | (lowest >> 18);
  for (std::size_t i = from; i < text.size(); ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (byte < lead || (byte >= 0x80 && byte < 0xC0)) continue;  // or a continuation byte
    if (in_ranges(ranges, utf8_decode_at(text, i))) return i;
  }
  return std::string_view::npos;
}

std::optional<std::size_t> first_invalid_utf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t n = text.size();
  std::size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len;
    char32_t min, cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2, min = 0x80, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, min = 0x800, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, min = 0x10000, cp = c & 0x07;
    } else {
      return i;
    }
    if (i + len > n) return i;
    for (std::size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::nullopt;
}

std::size_t utf8_length_at(std::string_view text, std::size_t at) {
  const auto c = static_cast<unsigned char>(text[at]);
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) return 2;
  if ((c & 0xF0) == 0xE0) return 3;
  return 4;
}

char32_t utf8_decode_at(std::string_view text, std::size_t at) {
  const std::size_t len = utf8_length_at(text, at);
  const auto c = static_cast<unsigned char>(text[at]);
  char32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (std::size_t k = 1; k < len; ++k)
    cp = (cp << 6) | (static_cast<unsigned char>(text[at + k]) & 0x3F);
  return cp;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::size_t utf8_previous_start(std::string_view text, std::size_t end) {
  std::size_t at = end - 1;
  while (at > 0 && (static_cast<unsigned char>(text[at]) & 0xC0) == 0x80) --at;
  return at;
}

std::string_view trim_unicode(std::string_view text, bool left, bool right,
                              bool (*is_space)(char32_t)) {
  std::size_t begin = 0, end = text.size();
  while (left && begin < end && is_space(utf8_decode_at(text, begin)))
    begin += utf8_length_at(text, begin);
  while (right && end > begin) {
    const std::size_t last = utf8_previous_start(text, end);
    if (!is_space(utf8_decode_at(text, last))) break;
    end = last;
  }
  return text.substr(begin, end - begin);
}

std::string normalize_unicode(std::string_view text, NormalForm form) {
  if (const auto bad = first_invalid_utf8(text))
    throw FormatError("cannot normalise text: invalid UTF-8 at byte " + std::to_string(*bad));
  // Between the code points tokenizers does not know, utf8proc's form; each of them a starter
  // that nothing composes with or moves past, as tokenizers treats it.
  std::string out;
  std::size_t segment = 0;
  for (std::size_t i = find_in_ranges(text, 0, kNormalizationUnknown); i != std::string_view::npos;
       i = find_in_ranges(text, segment, kNormalizationUnknown)) {
    out += utf8proc_form(text.substr(segment, i - segment), form);
    segment = i + utf8_length_at(text, i);
    out += text.substr(i, segment - i);
  }
  if (segment == 0) return utf8proc_form(text, form);
  return out + utf8proc_form(text.substr(segment), form);
}

std::string lowercase_unicode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); i += utf8_length_at(text, i)) {
    const char32_t c = utf8_decode_at(text, i);
    const auto* exception =
        std::lower_bound(std::begin(kLowercaseExceptions), std::end(kLowercaseExceptions), c,
                         [](const LowercaseException& e, char32_t v) { return e.code_point < v; });
    if (exception != std::end(kLowercaseExceptions) && exception->code_point == c) {
      out += exception->lowercase;
      continue;
    }
    append_utf8(out, static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c))));
  }
  return out;
}

bool is_unicode_whitespace(char32_t c) {
  switch (c) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return c >= 0x2000 && c <= 0x200A;
  }
}

}  // namespace zerolora
