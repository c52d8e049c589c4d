// Tokenization against the reference recipe on the public Alpaca records (fixtures from
// tools/make_data_fixtures.py, run_lora_clm's preprocessing with the Python sentencepiece; and
// from tools/make_data_fixtures_hf.py, run_lora_clm's own code with Transformers), for
// the Llama-2 and the stories260K tokenizers. The records and the Llama-2 tokenizer are not part
// of the repository: these tests need ZEROLORA_SHARED_DATA and skip, saying so, without it.
#include <gtest/gtest.h>

#include "data/dataset.hpp"
#include "io/tensor_read.hpp"
#include "test_util.hpp"

namespace zerolora {
namespace {

namespace fs = std::filesystem;

// The first 100 public Alpaca records through the Alpaca template and `tokenizer`, at the
// fixture's max_seq_length, the prompt masked or not.
std::vector<TokenSequence> first_records(const fs::path& alpaca, const Tokenizer& tokenizer,
                                         const SafetensorsFile& fixture, bool train_on_inputs) {
  auto records = read_records(alpaca, RecordKind::kInstruction).records;
  records.resize(100);
  Runtime rt(2);
  TokenizeOptions options;
  options.max_seq_length = std::stoll(fixture.metadata().at("max_seq_length"));
  options.bos_id = tokenizer.bos_id();
  options.eos_id = tokenizer.eos_id();
  options.train_on_inputs = train_on_inputs;
  return tokenize_records(rt, records, PromptTemplate::alpaca(), tokenizer, options);
}

// Equal token for token to the reference recipe, with and without masking and packed.
class DataFixture : public testing::SharedDataTest,
                    public ::testing::WithParamInterface<std::string> {};

TEST_P(DataFixture, TokensAndLabelsEqualTheReferenceRecipe) {
  const std::string name = GetParam();
  const fs::path tokenizer_path =
      name == "llama2" ? llama2_tokenizer() : testing::stories_model_dir() / "tokenizer.model";
  const Tokenizer tokenizer(tokenizer_path);
  const SafetensorsFile ref(testing::fixtures_dir() / "data" / ("alpaca_" + name + ".safetensors"));
  auto ints = [&](const std::string& key) {
    const auto v = read_int_tensor(ref, ref.at(key));
    return std::vector<std::int32_t>(v.begin(), v.end());
  };
  const auto masked = first_records(alpaca(), tokenizer, ref, false);
  const auto unmasked = first_records(alpaca(), tokenizer, ref, true);
  const Index max_seq_length = std::stoll(ref.metadata().at("max_seq_length"));

  std::vector<std::int32_t> ids, labels, lengths, labels_unmasked;
  for (std::size_t i = 0; i < masked.size(); ++i) {
    ids.insert(ids.end(), masked[i].input_ids.begin(), masked[i].input_ids.end());
    labels.insert(labels.end(), masked[i].labels.begin(), masked[i].labels.end());
    labels_unmasked.insert(labels_unmasked.end(), unmasked[i].labels.begin(),
                           unmasked[i].labels.end());
    lengths.push_back(static_cast<std::int32_t>(masked[i].size()));
  }
  EXPECT_EQ(lengths, ints("masked.lengths"));
  EXPECT_EQ(ids, ints("masked.input_ids"));
  EXPECT_EQ(labels, ints("masked.labels"));
  EXPECT_EQ(labels_unmasked, ints("unmasked.labels"));

  const auto blocks = pack(masked, Packing::kConcat, max_seq_length);
  std::vector<std::int32_t> block_ids, block_labels;
  for (const auto& b : blocks) {
    EXPECT_EQ(b.size(), max_seq_length);
    EXPECT_EQ(b.segment_lengths,
              std::vector<std::int32_t>{static_cast<std::int32_t>(max_seq_length)});
    block_ids.insert(block_ids.end(), b.input_ids.begin(), b.input_ids.end());
    block_labels.insert(block_labels.end(), b.labels.begin(), b.labels.end());
  }
  EXPECT_EQ(static_cast<Index>(blocks.size()), ref.at("concat.input_ids").shape[0]);
  EXPECT_EQ(block_ids, ints("concat.input_ids"));
  EXPECT_EQ(block_labels, ints("concat.labels"));
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, DataFixture, ::testing::Values("llama2", "stories260k"));

using PublicData = testing::SharedDataTest;

// The seed's own stack (run_lora_clm v1.12.0's preprocessing, transformers 4.40's
// LlamaTokenizerFast: tools/make_data_fixtures_hf.py) gives exactly the Llama-2 fixture above.
// On stories260K it differs, knowingly: that tokenizer.model asks sentencepiece to collapse
// runs of spaces (remove_extra_whitespaces), which zerolora and the slow LlamaTokenizer do and
// HF's fast converter ignores. The difference is pinned here, record by record: the same
// lengths and masks everywhere, other ids in records 78 and 87 only ("Year   |  Population",
// "{\n  border").
TEST_F(PublicData, Stories260kDiffersFromTheFastTokenizerOnlyInRunsOfSpaces) {
  const Tokenizer tokenizer(testing::stories_model_dir() / "tokenizer.model");
  const SafetensorsFile fast(testing::fixtures_dir() / "data" /
                             "alpaca_stories260k_hf.safetensors");
  ASSERT_EQ(fast.metadata().at("tokenizer_class"), "LlamaTokenizerFast");
  const auto ours = first_records(alpaca(), tokenizer, fast, false);
  const auto lengths = read_int_tensor(fast, fast.at("masked.lengths"));
  const auto ids = read_int_tensor(fast, fast.at("masked.input_ids"));
  const auto labels = read_int_tensor(fast, fast.at("masked.labels"));
  ASSERT_EQ(lengths.size(), ours.size());
  std::vector<std::size_t> differing;
  std::size_t at = 0;
  for (std::size_t i = 0; i < ours.size(); ++i) {
    const auto n = static_cast<std::size_t>(lengths[i]);
    ASSERT_EQ(static_cast<std::size_t>(ours[i].size()), n) << "record " << i;
    bool same = true;
    for (std::size_t t = 0; t < n; ++t) {
      same = same && ours[i].input_ids[t] == ids[at + t];
      EXPECT_EQ(ours[i].labels[t] == kIgnoreIndex, labels[at + t] == kIgnoreIndex)
          << "mask of record " << i << " at " << t;
    }
    if (!same) differing.push_back(i);
    at += n;
  }
  EXPECT_EQ(differing, (std::vector<std::size_t>{78, 87}));
}
TEST_F(PublicData, NonAsciiRoundTripsThroughLlama2ByteFallback) {
  const Tokenizer tokenizer(llama2_tokenizer());
  for (const std::string text :
       {"日本語のテキストを学習する", "中文训练数据，包含标点。", "emoji 🦙🔥 and ünïcödé",
        "mixed: résumé — naïve — 한국어"}) {
    const auto ids = tokenizer.encode(text);
    EXPECT_EQ(tokenizer.decode(ids), text);
  }
}

}  // namespace
}  // namespace zerolora
