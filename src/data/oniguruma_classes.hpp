// tokenizer.json patterns were written for Oniguruma (inside Hugging Face tokenizers) and run
// here on PCRE2. The syntax they use means the same in both; some classes do not: Oniguruma's
// \s is Unicode White_Space (PCRE2's also takes U+180E), its \w and \d are other sets, and its
// Unicode tables are newer than the PCRE2 Debian 12 ships (Unicode 16.0 against 14.0), so a
// letter assigned since (U+1C89, the CJK Extension I ideographs, ...) is \p{L} to one and not
// to the other, and a text splits, and tokenizes, differently.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "data/unicode_text.hpp"

namespace zerolora {

// A tokenizer.json pattern for PCRE2, two ways. `plain`: \s and \S spelled as White_Space,
// every class left to PCRE2's tables. `exact`: also each character class and class escape
// (\p{..} with a general category, \w, \d, their negations) that the table of
// tools/make_unicode_tables.py says the two engines disagree on gains the code points where
// they do, or loses them. The two match alike on any text without a code point of `differ`
// (sorted): the plain one, the faster, serves those. The table is for one PCRE2 Unicode version
// (unicode_class_delta.inc); with another, exact is plain. Script properties (\p{Han}, ...) are
// always left to PCRE2.
struct PatternForPcre2 {
  std::string plain, exact;
  std::vector<CodePointRange> differ;
};
PatternForPcre2 pattern_for_pcre2(std::string_view oniguruma_pattern);

// The Unicode version of the linked PCRE2's tables, and whether the table is for it.
std::string pcre2_unicode_version();
bool oniguruma_class_table_applies();

}  // namespace zerolora
