// Tokenization against the reference recipe on the public Alpaca records (fixtures from
// tools/make_data_fixtures.py, run_lora_clm's preprocessing with the Python sentencepiece), for
// the Llama-2 and the stories260K tokenizers. The records and the Llama-2 tokenizer are not part
// of the repository: these tests need ZEROLORA_SHARED_DATA and skip, saying so, without it.
#include <gtest/gtest.h>

#include "data/dataset.hpp"
#include "io/tensor_read.hpp"
#include "test_util.hpp"

namespace zerolora {
namespace {

namespace fs = std::filesystem;

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
  auto records = read_records(alpaca(), RecordKind::kInstruction).records;
  records.resize(100);
  Runtime rt(2);
  TokenizeOptions options;
  options.max_seq_length = std::stoll(ref.metadata().at("max_seq_length"));
  options.bos_id = tokenizer.bos_id();
  options.eos_id = tokenizer.eos_id();
  const auto masked = tokenize_records(rt, records, PromptTemplate::alpaca(), tokenizer, options);
  options.train_on_inputs = true;
  const auto unmasked = tokenize_records(rt, records, PromptTemplate::alpaca(), tokenizer, options);

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

  const auto blocks = pack(masked, Packing::kConcat, options.max_seq_length);
  std::vector<std::int32_t> block_ids, block_labels;
  for (const auto& b : blocks) {
    EXPECT_EQ(b.size(), options.max_seq_length);
    EXPECT_EQ(b.segment_lengths,
              std::vector<std::int32_t>{static_cast<std::int32_t>(options.max_seq_length)});
    block_ids.insert(block_ids.end(), b.input_ids.begin(), b.input_ids.end());
    block_labels.insert(block_labels.end(), b.labels.begin(), b.labels.end());
  }
  EXPECT_EQ(static_cast<Index>(blocks.size()), ref.at("concat.input_ids").shape[0]);
  EXPECT_EQ(block_ids, ints("concat.input_ids"));
  EXPECT_EQ(block_labels, ints("concat.labels"));
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, DataFixture, ::testing::Values("llama2", "stories260k"));

using PublicData = testing::SharedDataTest;
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
