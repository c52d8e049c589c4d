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

}  // namespace
}  // namespace zerolora
