// The data pipeline: readers and their errors, templates, tokenization against the reference
// recipe (fixtures from tools/make_data_fixtures.py), packing, batching and the sampler.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>

#include "core/error.hpp"
#include "data/collate.hpp"
#include "data/dataset.hpp"
#include "data/sampler.hpp"
#include "test_util.hpp"

namespace zerolora {
namespace {

namespace fs = std::filesystem;

class DataTest : public ::testing::Test {
 protected:
  // The project's own Alpaca-format instruction set (tools/make_demo_data.py).
  fs::path demo_records() const { return testing::demo_dir() / "instructions.json"; }
  fs::path stories_tokenizer() const { return testing::stories_model_dir() / "tokenizer.model"; }
  fs::path write(const std::string& name, const std::string& content) const {
    const fs::path path = temp_ / name;
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }
  template <class F>
  void expect_format_error(F&& f, std::initializer_list<std::string> parts) {
    try {
      f();
      FAIL() << "no error";
    } catch (const FormatError& e) {
      for (const auto& part : parts)
        EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  }
  testing::TempDir temp_;
};

TEST_F(DataTest, ReadsAlpacaJsonAndTheSameAsJsonLines) {
  const auto set = read_records(demo_records(), RecordKind::kInstruction);
  ASSERT_EQ(set.records.size(), 1000u);
  EXPECT_EQ(set.skipped_empty_output, 0);
  EXPECT_EQ(std::count_if(set.records.begin(), set.records.end(),
                          [](const Record& r) { return !r.input.empty(); }),
            400);
  EXPECT_EQ(set.records[0].instruction, "Write a short, happy story about Sam and Kate.");

  // The same records as JSON Lines, with renamed columns and an extra ignored field.
  std::ifstream in(demo_records());
  const auto all = nlohmann::json::parse(in);
  std::string lines;
  for (const auto& r : all)
    lines +=
        nlohmann::json{
            {"q", r["instruction"]}, {"ctx", r["input"]}, {"a", r["output"]}, {"id", {1, 2}}}
            .dump() +
        "\n";
  ColumnNames columns;
  columns.instruction = "q";
  columns.input = "ctx";
  columns.output = "a";
  const auto jsonl = read_records(write("d.jsonl", lines), RecordKind::kInstruction, columns);
  ASSERT_EQ(jsonl.records.size(), 1000u);
  for (std::size_t i = 0; i < 1000; ++i) {
    EXPECT_EQ(jsonl.records[i].instruction, set.records[i].instruction);
    EXPECT_EQ(jsonl.records[i].input, set.records[i].input);
    EXPECT_EQ(jsonl.records[i].output, set.records[i].output);
  }
}

// The Python package's lists and datasets arrive as JSON Lines text in memory: read exactly as
// the same text in a .jsonl file, and errors name the label where a file's path would be.
TEST_F(DataTest, RecordsInMemoryReadAsTheSameFile) {
  const std::string lines = R"({"instruction": "a", "output": "b"})"
                            "\n\n"
                            R"({"instruction": "c", "input": "d", "output": "e"})"
                            "\n"
                            R"({"instruction": "f", "output": ""})";
  const auto file = read_records(write("m.jsonl", lines), RecordKind::kInstruction);
  const auto memory = read_records(InMemoryRecords{"the list", lines}, RecordKind::kInstruction);
  EXPECT_EQ(memory.read, 3);
  EXPECT_EQ(memory.skipped_empty_output, 1);
  ASSERT_EQ(memory.records.size(), file.records.size());
  for (std::size_t i = 0; i < file.records.size(); ++i) {
    EXPECT_EQ(memory.records[i].instruction, file.records[i].instruction);
    EXPECT_EQ(memory.records[i].input, file.records[i].input);
    EXPECT_EQ(memory.records[i].output, file.records[i].output);
  }
  expect_format_error(
      [&] {
        read_records(InMemoryRecords{"the list", R"({"instruction": "x"})"},
                     RecordKind::kInstruction);
      },
      {"the list", "record 0", "output"});
  expect_format_error(
      [&] {
        read_records(InMemoryRecords{"the list", "\n"}, RecordKind::kInstruction);
      },
      {"the list", "no records"});
}

TEST_F(DataTest, PrettyPrintedJsonObjectsInTheCommonShapes) {
  const std::string a = R"({"instruction": "i0", "output": "o0"})";
  const std::string b = R"({"instruction": "i1", "input": "x1", "output": "o1"})";
  auto read = [&](const std::string& name, const std::string& text) {
    return read_records(write(name, text), RecordKind::kInstruction).records;
  };
  // One record per line (JSON Lines in a .json file, as `datasets` reads it).
  EXPECT_EQ(read("lines.json", a + "\n" + b + "\n").size(), 2u);
  // An object holding one array of records, whatever its key is called, pretty-printed.
  const auto wrapped =
      read("wrapped.json", "{\n  \"rows\": [\n    " + a + ",\n    " + b + "\n  ]\n}");
  ASSERT_EQ(wrapped.size(), 2u);
  EXPECT_EQ(wrapped[1].input, "x1");
  // Columns of equal length.
  const auto columns = read("columns.json", R"({
    "instruction": ["i0", "i1"], "input": ["", "x1"], "output": ["o0", "o1"]})");
  ASSERT_EQ(columns.size(), 2u);
  EXPECT_EQ(columns[1].output, "o1");
  // A single record, pretty-printed.
  const auto single = read("single.json", "{\n  \"instruction\": \"i\",\n  \"output\": \"o\"\n}");
  ASSERT_EQ(single.size(), 1u);
  EXPECT_EQ(single[0].output, "o");
  // Errors inside a wrapped array still name the record and field.
  expect_format_error(
      [&] { read("bad_wrapped.json", "{\n \"data\": [" + a + ", {\"output\": \"o\"}]}"); },
      {"bad_wrapped.json", "record 1", "instruction"});
  // Ambiguous or unknown shapes are refused, saying what was expected.
  expect_format_error(
      [&] { read("two.json", "{\n \"train\": [" + a + "], \"test\": [" + b + "]}"); },
      {"two.json", "several arrays of records", "'test', 'train'"});
  expect_format_error([&] { read("other.json", "{\n \"version\": 2, \"meta\": {}}"); },
                      {"other.json", "expected an array of records", "'meta', 'version'"});
  expect_format_error(
      [&] { read("ragged.json", "{\n \"instruction\": [\"a\"], \"output\": [\"b\", \"c\"]}"); },
      {"ragged.json", "expected an array of records"});
  expect_format_error([&] { read("broken.json", "{\n \"data\": ["); },
                      {"broken.json", "neither JSON Lines", "nor one JSON document"});
}

TEST_F(DataTest, BadRecordsAreNamed) {
  expect_format_error(
      [&] {
        read_records(write("a.json", R"([{"instruction":"x","output":"y"}, 3])"),
                     RecordKind::kInstruction);
      },
      {"a.json", "record 1", "not an object"});
  expect_format_error(
      [&] { read_records(write("b.json", R"([{"instruction":"x"}])"), RecordKind::kInstruction); },
      {"record 0", "no field 'output'"});
  expect_format_error(
      [&] { read_records(write("c.json", R"([{"output":"x"}])"), RecordKind::kInstruction); },
      {"record 0", "no field 'instruction'"});
  expect_format_error(
      [&] {
        read_records(
            write("d.json", R"([{"instruction":"x","output":"y"},{"instruction":5,"output":"y"}])"),
            RecordKind::kInstruction);
      },
      {"record 1", "field 'instruction' is a number"});
  expect_format_error(
      [&] {
        read_records(write("e.json", R"([{"instruction":"x","output":["y"]}])"),
                     RecordKind::kInstruction);
      },
      {"record 0", "field 'output' is an array"});
  expect_format_error(
      [&] {
        read_records(write("f.jsonl",
                           "{\"instruction\":\"x\",\"output\":\"y\"}\n\n{\"instruction\":\"x\"\n"),
                     RecordKind::kInstruction);
      },
      {"f.jsonl", "line 3", "record 1"});
  expect_format_error(
      [&] {
        read_records(
            write("g.jsonl", std::string("{\"instruction\":\"x\",\"output\":\"\xff\xfe\"}\n")),
            RecordKind::kInstruction);
      },
      {"g.jsonl", "line 1", "invalid UTF-8"});
  expect_format_error(
      [&] {
        read_records(
            write("h.json", std::string("[{\"instruction\":\"ok\",\"output\":\"y\"},{"
                                        "\"instruction\":\"\xc0\xaf\",\"output\":\"y\"}]")),
            RecordKind::kInstruction);
      },
      {"h.json", "record 1", "invalid UTF-8"});
  expect_format_error(
      [&] {
        read_records(write("i.json", R"({"instruction": "x"} trailing)"), RecordKind::kInstruction);
      },
      {"i.json"});
  expect_format_error(
      [&] { read_records(write("j.json", R"("just a string")"), RecordKind::kInstruction); },
      {"expected a JSON array"});
  expect_format_error([&] { read_records(write("k.json", "  \n"), RecordKind::kInstruction); },
                      {"empty"});
  expect_format_error([&] { read_records(write("l.txt", "fine\n\xe2\x82\n"), RecordKind::kText); },
                      {"line 2", "invalid UTF-8"});
  EXPECT_THROW(read_records(temp_ / "missing.json", RecordKind::kInstruction), IoError);
  EXPECT_THROW(read_records(write("m.csv", "a,b"), RecordKind::kInstruction), UsageError);
}

TEST_F(DataTest, EmptyOutputsAreSkippedAndCounted) {
  const auto set = read_records(
      write("s.json",
            R"([{"instruction":"a","output":""},{"instruction":"b","input":null,"output":"c"}])"),
      RecordKind::kInstruction);
  EXPECT_EQ(set.read, 2);
  EXPECT_EQ(set.skipped_empty_output, 1);
  ASSERT_EQ(set.records.size(), 1u);
  EXPECT_EQ(set.records[0].input, "");
}

TEST_F(DataTest, TextModeFromTxtAndJson) {
  const auto txt = read_records(write("t.txt", "first line\r\n\nsecond line\n"), RecordKind::kText);
  ASSERT_EQ(txt.records.size(), 2u);
  EXPECT_EQ(txt.records[1].output, "second line");
  const auto json =
      read_records(write("t.jsonl", "{\"text\":\"hello\"}\n{\"text\":\"\"}\n"), RecordKind::kText);
  EXPECT_EQ(json.records.size(), 1u);
  EXPECT_EQ(json.skipped_empty_output, 1);
}

TEST_F(DataTest, TemplatesProduceExactPrompts) {
  const Record with{"Summarize.", "Long text.", "Short.", {}}, without{"Say hi.", "", "Hi!", {}};
  const auto alpaca_t = PromptTemplate::alpaca();
  EXPECT_EQ(alpaca_t.apply(with).source,
            "Below is an instruction that describes a task, paired with an input that provides "
            "further context. "
            "Write a response that appropriately completes the request.\n\n### "
            "Instruction:\nSummarize.\n\n"
            "### Input:\nLong text.\n\n### Response:");
  EXPECT_EQ(alpaca_t.apply(without).source,
            "Below is an instruction that describes a task. Write a response that appropriately "
            "completes the "
            "request.\n\n### Instruction:\nSay hi.\n\n### Response:");
  EXPECT_EQ(alpaca_t.apply(without).target, "Hi!");
  const auto raw = PromptTemplate::raw().apply(with);
  EXPECT_EQ(raw.source, "Summarize.Long text.");
  EXPECT_EQ(raw.target, "Short.");
  const auto plain =
      PromptTemplate::from_file(write("t.txt", "Q: {instruction} [{input}]\nA: {output}</end>"));
  EXPECT_EQ(plain.apply(with).source, "Q: Summarize. [Long text.]\nA: ");
  EXPECT_EQ(plain.apply(with).target, "Short.</end>");
  const auto lora = PromptTemplate::from_file(write(
      "t.json",
      R"({"description":"x","prompt_input":"I:{instruction} C:{input} R:","prompt_no_input":"I:{instruction} R:"})"));
  EXPECT_EQ(lora.apply(with).source, "I:Summarize. C:Long text. R:");
  EXPECT_EQ(lora.apply(without).source, "I:Say hi. R:");
  EXPECT_THROW(PromptTemplate::from_file(write("bad.txt", "no placeholder")), FormatError);
  EXPECT_THROW(PromptTemplate::named("nonexistent-template"), UsageError);
}

void expect_non_ascii_round_trip(const fs::path& tokenizer_path) {
  const Tokenizer tokenizer(tokenizer_path);
  for (const std::string text :
       {"日本語のテキストを学習する", "中文训练数据，包含标点。", "emoji 🦙🔥 and ünïcödé",
        "mixed: résumé — naïve — 한국어"}) {
    const auto ids = tokenizer.encode(text);
    EXPECT_EQ(tokenizer.decode(ids), text) << tokenizer_path;
  }
}

TEST_F(DataTest, NonAsciiRoundTripsThroughByteFallback) {
  expect_non_ascii_round_trip(stories_tokenizer());
}

TEST_F(DataTest, BoundaryPackingKeepsWholeExamples) {
  const Tokenizer tokenizer(stories_tokenizer());
  Runtime rt(2);
  // Blocks of 2048: the demo's records are a few hundred tokens each with this tokenizer.
  const Index block_length = 2048;
  TokenizeOptions options;
  options.max_seq_length = block_length;
  auto records = read_records(demo_records(), RecordKind::kInstruction).records;
  records.resize(200);
  const auto examples = tokenize_records(rt, records, PromptTemplate::alpaca(), tokenizer, options);
  const auto blocks = pack(examples, Packing::kBoundaries, block_length);
  // Every example appears exactly once, whole, as one segment of one block.
  std::multiset<std::vector<std::int32_t>> expected, found;
  Index total = 0, expected_total = 0;
  for (const auto& e : examples) {
    expected.insert(e.input_ids);
    expected_total += e.size();
  }
  const TokenSequence* multi = nullptr;
  for (const auto& b : blocks) {
    EXPECT_LE(b.size(), block_length);
    Index at = 0;
    for (auto len : b.segment_lengths) {
      found.insert(
          std::vector<std::int32_t>(b.input_ids.begin() + at, b.input_ids.begin() + at + len));
      at += len;
    }
    EXPECT_EQ(at, b.size());
    total += b.size();
    if (b.segment_lengths.size() > 1) multi = &b;
  }
  EXPECT_EQ(found, expected);
  EXPECT_EQ(total, expected_total);
  // Best fit packs close to the bound: at most 10% more blocks than tokens / block length.
  EXPECT_LE(static_cast<double>(blocks.size()),
            1.1 * std::ceil(static_cast<double>(expected_total) / block_length) + 1);

  // The model batch keeps the segments: positions restart and labels shift inside each.
  ASSERT_NE(multi, nullptr);
  const std::vector<TokenSequence> one{*multi};
  const std::vector<Index> first{0};
  const Batch batch = make_batch(one, first);
  EXPECT_EQ(batch.segments.size(), multi->segment_lengths.size());
  EXPECT_EQ(batch.segments[1].begin, multi->segment_lengths[0]);
  EXPECT_EQ(batch.targets[multi->segment_lengths[0] - 1], kIgnoreIndex);  // no cross-example target
}

TEST(Collate, PaddedViewAndModelView) {
  std::vector<TokenSequence> data(2);
  data[0] = {{1, 5, 6}, {-100, 5, 6}, {3}};
  data[1] = {{1, 7, 8, 9, 2}, {1, 7, 8, 9, 2}, {5}};
  const std::vector<Index> both{1, 0};
  const auto padded = pad_batch(data, both, 0, 8);
  EXPECT_EQ(padded.rows, 2);
  EXPECT_EQ(padded.cols, 8);
  EXPECT_EQ(std::vector<std::int32_t>(padded.labels.begin() + 8, padded.labels.end()),
            (std::vector<std::int32_t>{-100, 5, 6, -100, -100, -100, -100, -100}));
  EXPECT_EQ(std::accumulate(padded.attention_mask.begin(), padded.attention_mask.end(), 0), 8);
  const Batch batch = make_batch(data, both);
  EXPECT_EQ(batch.size(), 8);  // no padding
  EXPECT_EQ(batch.targets,
            (std::vector<std::int32_t>{7, 8, 9, 2, kIgnoreIndex, 5, 6, kIgnoreIndex}));
}

TEST(Sampler, RanksPartitionEachGlobalBatch) {
  const Index n = 103;
  std::vector<Index> lengths(n);
  for (Index i = 0; i < n; ++i) lengths[i] = (i * 37) % 91 + 1;
  for (bool group : {false, true})
    for (int world : {1, 2, 3, 4}) {
      SamplerOptions o;
      o.global_batch = 12;
      o.world = world;
      o.seed = 7;
      o.group_by_length = group;
      const DistributedSampler reference(lengths, o);
      for (Index epoch = 0; epoch < 2; ++epoch) {
        std::multiset<Index> seen;
        for (Index step = 0; step < reference.steps_per_epoch(); ++step) {
          const auto global = reference.global_batch(epoch, step);
          std::vector<Index> joined;
          for (int r = 0; r < world; ++r) {
            o.rank = r;
            const auto share = DistributedSampler(lengths, o).rank_batch(epoch, step);
            EXPECT_EQ(static_cast<Index>(share.size()), 12 / world);
            joined.insert(joined.end(), share.begin(), share.end());
          }
          EXPECT_EQ(joined, global);  // union = the global batch, in order, no overlap
          seen.insert(global.begin(), global.end());
        }
        for (Index i = 0; i < n; ++i)
          EXPECT_GE(seen.count(i), 1u);  // every sample once (plus wrap-around)
        EXPECT_EQ(seen.size(), static_cast<std::size_t>(reference.steps_per_epoch() * 12));
      }
    }
}

// Hugging Face's semantics for a training set smaller than one global batch: one partial
// batch per epoch holding the whole set (wrapped only up to a multiple of the world size),
// never the set repeated up to the requested size.
TEST(Sampler, DatasetSmallerThanTheGlobalBatchIsOnePartialBatch) {
  const std::vector<Index> lengths(7, 10);
  for (int world : {1, 2, 3}) {
    SamplerOptions o;
    o.global_batch = 300 * world;
    o.world = world;
    const DistributedSampler sampler(lengths, o);
    const Index expected = (7 + world - 1) / world * world;
    EXPECT_TRUE(sampler.partial_epoch_batch());
    EXPECT_EQ(sampler.steps_per_epoch(), 1);
    EXPECT_EQ(sampler.batch_size(), expected);
    EXPECT_EQ(sampler.per_rank(), expected / world);
    const auto batch = sampler.global_batch(0, 0);
    EXPECT_EQ(static_cast<Index>(batch.size()), expected);
    EXPECT_EQ(std::set<Index>(batch.begin(), batch.end()).size(), 7u);  // each sample, once+
  }
  SamplerOptions o;
  o.global_batch = 4;
  const DistributedSampler full(lengths, o);  // larger data: unchanged
  EXPECT_FALSE(full.partial_epoch_batch());
  EXPECT_EQ(full.batch_size(), 4);
  EXPECT_EQ(full.steps_per_epoch(), 2);
}

TEST(Sampler, SeedAndEpochDetermineTheOrder) {
  std::vector<Index> lengths(50, 1);
  SamplerOptions o;
  o.global_batch = 5;
  const DistributedSampler a(lengths, o), b(lengths, o);
  EXPECT_EQ(a.epoch_order(3), b.epoch_order(3));
  EXPECT_NE(a.epoch_order(0), a.epoch_order(1));
  o.seed = 43;
  EXPECT_NE(DistributedSampler(lengths, o).epoch_order(0), a.epoch_order(0));
  o.shuffle = false;
  const auto plain = DistributedSampler(lengths, o).epoch_order(0);
  EXPECT_TRUE(std::is_sorted(plain.begin(), plain.end()));
  o.drop_last = true;
  o.global_batch = 15;
  EXPECT_EQ(DistributedSampler(lengths, o).steps_per_epoch(), 3);
  o.world = 2;
  EXPECT_THROW(DistributedSampler(lengths, o), ConfigError);  // 15 is not a multiple of 2
}

TEST(Sampler, GroupByLengthSortsMegabatches) {
  std::vector<Index> lengths(400);
  for (Index i = 0; i < 400; ++i) lengths[i] = (i * 7919) % 1000;
  SamplerOptions o;
  o.global_batch = 2;
  o.group_by_length = true;
  const auto order = DistributedSampler(lengths, o).epoch_order(0);
  const Index mega = 50 * 2;
  for (Index start = 0; start < 400; start += mega)
    for (Index i = start + 1; i < start + mega; ++i)
      EXPECT_GE(lengths[order[i - 1]], lengths[order[i]]);
}

}  // namespace
}  // namespace zerolora
