// The tokenizer.json implementation against Hugging Face tokenizers' own output on the committed
// fixtures (tools/make_tokenizer_fixtures.py: one small trained vocabulary per model family's
// pipeline, a hostile corpus), and its error paths. tools/test_tokenizers.py does the same on
// the real 32K and 151K vocabularies and the public Alpaca records.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "data/dataset.hpp"
#include "data/hf_text_steps.hpp"
#include "data/oniguruma_classes.hpp"
#include "data/text_regex.hpp"
#include "data/tokenizer.hpp"
#include "data/unicode_text.hpp"
#include "test_util.hpp"

namespace zerolora {
namespace {

namespace fs = std::filesystem;

fs::path tokenizer_fixtures() {
  return testing::fixtures_dir() / "tokenizers";
}

nlohmann::json expected() {
  std::ifstream in(tokenizer_fixtures() / "expected.json");
  return nlohmann::json::parse(in);
}

class FamilyFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(FamilyFixture, IdsAndDecodesEqualHuggingFaceTokenizers) {
  const std::string family = GetParam();
  const nlohmann::json all = expected();
  const auto& corpus = all.at("corpus");
  const auto& rows = all.at("families").at(family);
  ASSERT_EQ(corpus.size(), rows.size());
  const Tokenizer tokenizer(tokenizer_fixtures() / family);
  EXPECT_STREQ(tokenizer.format(), "tokenizer.json");
  for (std::size_t i = 0; i < corpus.size(); ++i) {
    const std::string text = corpus[i].get<std::string>();
    const auto& row = rows[i];
    const auto ids = tokenizer.encode(text);
    EXPECT_EQ(ids, row.at("ids").get<std::vector<std::int32_t>>()) << family << " text " << i;
    auto decoded = [&](const char* key) {
      return row.at(key).is_boolean() ? text : row.at(key).get<std::string>();
    };
    EXPECT_EQ(tokenizer.decode(ids, false), decoded("decoded")) << family << " text " << i;
    EXPECT_EQ(tokenizer.decode(ids, true), decoded("decoded_skip_special"))
        << family << " text " << i;
    // What tokenizer(text) puts in front: BOS for Llama 3 / Mistral / Llama 2, none for Qwen2.
    const auto prefix = row.at("prefix").get<std::vector<std::int32_t>>();
    EXPECT_EQ(tokenizer.adds_bos(), !prefix.empty()) << family;
    if (!prefix.empty()) {
      EXPECT_EQ(tokenizer.bos_id(), prefix[0]) << family;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, FamilyFixture,
                         ::testing::Values("llama3", "qwen2", "gpt2", "smollm2", "mistral",
                                           "llama2hf", "metaspace"));

TEST(Tokenizer, SpecialTokensAndConfigComeFromTokenizerConfig) {
  const Tokenizer llama3(tokenizer_fixtures() / "llama3" / "tokenizer.json");
  EXPECT_EQ(llama3.bos_id(), *llama3.token_id("<|begin_of_text|>"));
  EXPECT_EQ(llama3.eos_id(), *llama3.token_id("<|eot_id|>"));
  const Tokenizer qwen(tokenizer_fixtures() / "qwen2");
  EXPECT_FALSE(qwen.adds_bos());
  EXPECT_EQ(qwen.bos_id(), -1);
  EXPECT_EQ(qwen.eos_id(), *qwen.token_id("<|im_end|>"));
  EXPECT_FALSE(qwen.token_id("no such token").has_value());
}

TEST(Tokenizer, ExamplesGetNoBosWhereTheTokenizerAddsNone) {
  const Tokenizer qwen(tokenizer_fixtures() / "qwen2");
  TokenizeOptions options;
  use_special_tokens(options, qwen, nullptr);
  EXPECT_FALSE(options.add_bos);
  const TokenSequence seq = tokenize_prompt(qwen, {"Say hi.", " Hi!"}, options);
  const auto source = qwen.encode("Say hi.");
  const auto full = qwen.encode("Say hi. Hi!");
  ASSERT_EQ(seq.size(), static_cast<Index>(full.size() + 1));  // the text and EOS
  EXPECT_EQ(seq.input_ids.front(), full.front());
  EXPECT_EQ(seq.input_ids.back(), qwen.eos_id());
  for (std::size_t i = 0; i < seq.labels.size(); ++i)
    EXPECT_EQ(seq.labels[i] == kIgnoreIndex, i < source.size()) << i;

  const Tokenizer llama3(tokenizer_fixtures() / "llama3");
  use_special_tokens(options, llama3, nullptr);
  EXPECT_TRUE(options.add_bos);
  EXPECT_EQ(tokenize_prompt(llama3, {"Say hi.", " Hi!"}, options).input_ids.front(),
            llama3.bos_id());
}

TEST(Tokenizer, InvalidUtf8IsRefusedWithItsOffset) {
  const Tokenizer tokenizer(tokenizer_fixtures() / "llama3");
  try {
    tokenizer.encode("ok \xC3\x28 bad");
    FAIL() << "invalid UTF-8 was encoded";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("byte 3"), std::string::npos) << e.what();
  }
  for (const char* bad : {"\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xE2\x82", "\x80"})
    EXPECT_TRUE(first_invalid_utf8(bad).has_value()) << bad;
  EXPECT_FALSE(first_invalid_utf8("\xF0\x9F\x91\x8D\xE2\x80\x8D").has_value());
}

TEST(Tokenizer, ModelDirectoryPrefersTokenizerJson) {
  const testing::TempDir dir;
  fs::copy(tokenizer_fixtures() / "qwen2" / "tokenizer.json", dir.path() / "tokenizer.json");
  fs::copy(testing::stories_model_dir() / "tokenizer.model", dir.path() / "tokenizer.model");
  EXPECT_STREQ(Tokenizer(dir.path()).format(), "tokenizer.json");
  fs::remove(dir.path() / "tokenizer.json");
  EXPECT_STREQ(Tokenizer(dir.path()).format(), "sentencepiece");
  fs::remove(dir.path() / "tokenizer.model");
  EXPECT_THROW(Tokenizer{dir.path()}, IoError);
}

// A pipeline step zerolora does not implement is refused naming the file and the step, never
// approximated.
TEST(Tokenizer, UnsupportedStepsAreRefusedByName) {
  const testing::TempDir dir;
  std::ifstream in(tokenizer_fixtures() / "gpt2" / "tokenizer.json");
  const nlohmann::json spec = nlohmann::json::parse(in);
  auto refused = [&](const char* where, const nlohmann::json& value, const char* named) {
    nlohmann::json changed = spec;
    changed[where] = value;
    const fs::path file = dir.path() / "tokenizer.json";
    std::ofstream(file) << changed.dump();
    try {
      Tokenizer{file};
      ADD_FAILURE() << where << " " << value.dump() << " was accepted";
    } catch (const UnsupportedError& e) {
      EXPECT_NE(std::string(e.what()).find(named), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(file.string()), std::string::npos) << e.what();
    }
  };
  refused("normalizer", {{"type", "BertNormalizer"}}, "BertNormalizer");
  refused("pre_tokenizer", {{"type", "UnicodeScripts"}}, "UnicodeScripts");
  refused("decoder", {{"type", "WordPiece"}}, "WordPiece");
  refused("model", {{"type", "Unigram"}, {"vocab", nlohmann::json::array()}}, "Unigram");
}

TEST(Tokenizer, MalformedMergesNameTheMerge) {
  const testing::TempDir dir;
  std::ifstream in(tokenizer_fixtures() / "gpt2" / "tokenizer.json");
  nlohmann::json spec = nlohmann::json::parse(in);
  spec["model"]["merges"][5] = "nosuchtoken x";
  std::ofstream(dir.path() / "tokenizer.json") << spec.dump();
  try {
    Tokenizer{dir.path() / "tokenizer.json"};
    FAIL() << "a merge of unknown tokens was accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("merge 5"), std::string::npos) << e.what();
  }
}

TEST(Tokenizer, LossyUtf8MatchesRust) {
  // One U+FFFD per maximal ill-formed subpart (String::from_utf8_lossy).
  EXPECT_EQ(utf8_lossy("a\xF0\x9F\x91z"), "a\xEF\xBF\xBDz");
  EXPECT_EQ(utf8_lossy("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(utf8_lossy("ok \xE2\x82\xAC"), "ok \xE2\x82\xAC");
}

// The pieces a pattern cuts a text into, as text.
std::vector<std::string> matches(const std::string& pattern, std::string_view text) {
  std::vector<std::string> out;
  for (const auto& span : TextRegex(pattern, false).find_matches(text))
    if (span.is_match) out.emplace_back(text.substr(span.begin, span.end - span.begin));
  return out;
}

// Unicode 16 code points (tokenizers' Oniguruma) that PCRE2 10.42's Unicode 14 tables do not
// know: U+1C89 CYRILLIC CAPITAL LETTER TJE (Lu), U+10D40 GARAY DIGIT ZERO (Nd), U+1171E AHOM
// CONSONANT SIGN MEDIAL RA (Mn in 14, Mc in 16).
constexpr const char* kTje = "\xE1\xB2\x89";
constexpr const char* kGarayZero = "\xF0\x90\xB5\x80";
constexpr const char* kAhomMedialRa = "\xF0\x91\x9C\x9E";

TEST(OnigurumaClasses, ClassesMatchOnigurumasUnicodeVersion) {
  if (!oniguruma_class_table_applies())
    GTEST_SKIP() << "the linked PCRE2's Unicode tables are version " << pcre2_unicode_version()
                 << ", not the one tools/make_unicode_tables.py's table is for: PCRE2's "
                    "classes serve as they are";
  const std::string tje = kTje, zero = kGarayZero, ra = kAhomMedialRa;
  // Qwen2's and Llama 3's split: a new letter is a letter, a new digit a digit.
  const std::string qwen2 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|)"
      R"(\s*[\r\n]+|\s+(?!\S)|\s+)";
  EXPECT_EQ(matches(qwen2, "..." + tje + "'t"), (std::vector<std::string>{"...", tje, "'t"}));
  EXPECT_EQ(matches(qwen2, "a" + zero + zero), (std::vector<std::string>{"a", zero, zero}));
  // Bare, negated, inside classes with literals, and the class escapes.
  EXPECT_EQ(matches(R"(\p{Lu})", tje), std::vector<std::string>{tje});
  EXPECT_TRUE(matches(R"(\P{L})", tje).empty());
  EXPECT_TRUE(matches(R"(\p{^L})", tje).empty());
  EXPECT_TRUE(matches(R"([^\p{L}])", tje).empty());
  EXPECT_TRUE(matches(R"(\p{Cn})", tje).empty());  // assigned since: out of the class
  EXPECT_EQ(matches(R"([]\p{L}-])", "]-" + tje + "!"), (std::vector<std::string>{"]", "-", tje}));
  EXPECT_EQ(matches(R"(\p{Mc})", ra), std::vector<std::string>{ra});
  EXPECT_TRUE(matches(R"(\p{Mn})", ra).empty());
  EXPECT_EQ(matches(R"(\d)", zero), std::vector<std::string>{zero});
  // Oniguruma's \w takes marks and not every number: U+0301 in, U+09F4 (a Bengali currency
  // numerator) out.
  EXPECT_EQ(matches(R"(\w+)", "a\xCC\x81\xE0\xA7\xB4"), std::vector<std::string>{"a\xCC\x81"});
  EXPECT_EQ(matches(R"([\p{L}^])", "^" + tje), (std::vector<std::string>{"^", tje}));
  EXPECT_EQ(matches(R"([a\p{L}-])", "-" + tje + "!"), (std::vector<std::string>{"-", tje}));
  EXPECT_EQ(matches(R"([^!\p{L}-])", "-!" + tje + "1"), (std::vector<std::string>{"1"}));
  // Names as both engines read them loosely, and the cased letters.
  EXPECT_EQ(matches(R"(\p{l}+)", "a" + tje), std::vector<std::string>{"a" + tje});
  EXPECT_EQ(matches(R"(\p{ L }+)", "a" + tje), std::vector<std::string>{"a" + tje});
  EXPECT_EQ(matches(R"(\p{LC})", tje), std::vector<std::string>{tje});
  // A comment and a '[' that opens no POSIX class are not classes.
  EXPECT_EQ(matches(R"((?#[)\p{L}])", "#" + tje + "]"), std::vector<std::string>{tje + "]"});
  EXPECT_EQ(matches(R"([[:]x:]\p{L}])", "x" + tje), std::vector<std::string>{});
  // Quoted text is not a class.
  EXPECT_EQ(matches(R"(\Q\p{L}\E)", R"(x\p{L})"), std::vector<std::string>{R"(\p{L})"});
}

// The pieces a one-step pre-tokenizer cuts a text into.
std::vector<std::string> pre_tokens(const nlohmann::json& step, const std::string& text) {
  std::vector<std::string> pieces;
  for (auto& piece : HfPreTokenizer(step, "test").apply({text})) pieces.push_back(piece.text);
  return pieces;
}

TEST(OnigurumaClasses, WhitespacePreTokenizerWordsAreRustRegexs) {
  if (!oniguruma_class_table_applies())
    GTEST_SKIP() << "the linked PCRE2's Unicode tables are version " << pcre2_unicode_version();
  // U+1C89 is alphabetic in Unicode 16, not in PCRE2's 14; U+200D (a joiner) is a word
  // character to Rust's regex.
  const std::string tje = kTje;
  EXPECT_EQ(pre_tokens({{"type", "Whitespace"}}, "a" + tje + "! " + tje + "\xE2\x80\x8D"),
            (std::vector<std::string>{"a" + tje, "!", tje + "\xE2\x80\x8D"}));
}

TEST(OnigurumaClasses, DigitsAndPunctuationAreRustsTables) {
  if (!oniguruma_class_table_applies())
    GTEST_SKIP() << "the linked PCRE2's Unicode tables are version " << pcre2_unicode_version();
  // U+11DE0 (a Unicode 17 digit) is numeric to Rust; U+10D40 (Unicode 16) too.
  const std::string digits =
      "a\xF0\x91\xB7\xA0\xF0\x90\xB5\x80"
      "1b";
  EXPECT_EQ(pre_tokens({{"type", "Digits"}, {"individual_digits", true}}, digits),
            (std::vector<std::string>{"a", "\xF0\x91\xB7\xA0", "\xF0\x90\xB5\x80", "1", "b"}));
  EXPECT_EQ(pre_tokens({{"type", "Digits"}, {"individual_digits", false}}, digits),
            (std::vector<std::string>{"a",
                                      "\xF0\x91\xB7\xA0\xF0\x90\xB5\x80"
                                      "1",
                                      "b"}));
  // U+061D (Arabic end of text mark, Unicode 14) is punctuation to Oniguruma, not to the
  // crate's older table; '!' and U+3001 (an ideographic comma) are to both.
  EXPECT_EQ(pre_tokens({{"type", "Punctuation"}},
                       "a\xD8\x9D"
                       "b!c\xE3\x80\x81"),
            (std::vector<std::string>{"a\xD8\x9D"
                                      "b",
                                      "!", "c", "\xE3\x80\x81"}));
}

TEST(OnigurumaClasses, PatternsPcre2RefusesAreNamed) {
  for (const std::string pattern : {R"([z-a\p{L}])", R"(a[\p{L})", R"(\p{L}(?)"}) {
    try {
      TextRegex(pattern, false);
      ADD_FAILURE() << pattern << " compiled";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("'" + pattern + "' does not compile"), std::string::npos)
          << e.what();
    }
  }
}

TEST(OnigurumaClasses, ARewriteTooLargeForPcre2LeavesThePlainPattern) {
  // Each \w gains about 400 ranges: 40 of them pass PCRE2's compiled size limit, the plain
  // pattern does not.
  std::string pattern = R"(\w+a)";
  for (int i = 0; i < 40; ++i) pattern += R"(|\w+)" + std::to_string(i);
  EXPECT_EQ(matches(pattern, "ba cb0"), (std::vector<std::string>{"ba", "cb0"}));
}

TEST(OnigurumaClasses, PlainPatternServesTextsWithoutTheCodePointsThatDiffer) {
  const PatternForPcre2 none = pattern_for_pcre2(R"('s|\s+(?!\S)|[a-z]+)");
  EXPECT_EQ(none.plain, R"('s|\p{White_Space}+(?!\P{White_Space})|[a-z]+)");
  EXPECT_EQ(none.exact, none.plain);
  EXPECT_TRUE(none.differ.empty());
  if (!oniguruma_class_table_applies())
    GTEST_SKIP() << "the linked PCRE2's Unicode tables are version " << pcre2_unicode_version()
                 << ": no class is rewritten";
  const PatternForPcre2 letters = pattern_for_pcre2(R"([^\r\n\p{L}]?\p{L}+)");
  EXPECT_EQ(letters.plain, R"([^\r\n\p{L}]?\p{L}+)");
  EXPECT_NE(letters.exact, letters.plain);
  EXPECT_TRUE(in_ranges(letters.differ, 0x1C89));
  EXPECT_FALSE(in_ranges(letters.differ, 'a'));
  EXPECT_FALSE(in_ranges(letters.differ, 0x4E00));  // a letter to both
}

TEST(UnicodeText, NormalisationLeavesWhatTokenizersDoesNotKnow) {
  // U+0898 (Arabic, Unicode 14, class 230) is unknown to tokenizers' normaliser: a starter
  // that U+0316 (class 220) is not moved past. utf8proc alone would reorder the two.
  const std::string text = "a\xE0\xA2\x98\xCC\x96";
  for (const NormalForm form : {NormalForm::kNfc, NormalForm::kNfd, NormalForm::kNfkc})
    EXPECT_EQ(normalize_unicode(text, form), text);
  // Around it, utf8proc's forms: e + U+0301 composes, the fi ligature decomposes (NFKC).
  EXPECT_EQ(normalize_unicode("e\xCC\x81\xE0\xA2\x98\xEF\xAC\x81", NormalForm::kNfkc),
            "\xC3\xA9\xE0\xA2\x98"
            "fi");
  EXPECT_EQ(normalize_unicode("e\xCC\x81", NormalForm::kNfc), "\xC3\xA9");
}

TEST(UnicodeText, FindInRangesPassesOverLowerLeadBytesOnly) {
  const CodePointRange nko[] = {{0x7FD, 0x7FD}, {0x10D40, 0x10D49}};
  // U+07FC and U+07FD share their lead byte; U+4E00's is above it; U+10D40's is 4 bytes long.
  EXPECT_EQ(find_in_ranges("a\xDF\xBC\xDF\xBD", 0, nko), 3u);
  EXPECT_EQ(find_in_ranges("a\xDF\xBC\xE4\xB8\x80", 0, nko), std::string_view::npos);
  EXPECT_EQ(find_in_ranges("\xE4\xB8\x80\xF0\x90\xB5\x80x", 0, nko), 3u);
  EXPECT_EQ(find_in_ranges("\xDF\xBD\xDF\xBD", 1, nko), 2u);  // from the byte given
  const CodePointRange ascii[] = {{'b', 'c'}};
  EXPECT_EQ(find_in_ranges("\xC3\xA9"
                           "ab",
                           0, ascii),
            3u);
  EXPECT_EQ(find_in_ranges("abc", 0, {}), std::string_view::npos);
}

TEST(UnicodeText, LowercaseIsRustsToLowercase) {
  EXPECT_EQ(lowercase_unicode("\xC4\xB0"), "i\xCC\x87");                 // U+0130: two code points
  EXPECT_EQ(lowercase_unicode("\xE1\xB2\x89"), "\xE1\xB2\x8A");          // U+1C89 (Unicode 16)
  EXPECT_EQ(lowercase_unicode("\xCE\x9F\xCE\xA3"), "\xCE\xBF\xCF\x83");  // no final sigma
}

}  // namespace
}  // namespace zerolora
