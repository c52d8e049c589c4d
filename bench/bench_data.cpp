// Benchmark: the data pipeline on a large Alpaca-format file (an instruction set repeated
// --copies times; 52 copies of 1000 records are about the size of tatsu-lab/alpaca): JSON
// parsing, template + tokenization, packing. Prints key=value lines. By default the demo's
// instruction set and tokenizer; BENCHMARKS.md's figure uses the public Alpaca records and the
// Llama-2 tokenizer (--data, --tokenizer). --compare_tokenizer times a second tokenizer on the
// same records, side by side (the tokenizer.json path against sentencepiece, say: keys with
// the prefix b_ and the time ratio b / first).
//   bench_data [--data FILE] [--tokenizer FILE|DIR] [--compare_tokenizer FILE|DIR]
//              [--copies 52] [--max_seq_length 2048] [--threads 0]
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "bench_util.hpp"
#include "core/types.hpp"
#include "data/dataset.hpp"

static int bench_main(int argc, char** argv) {
  using namespace zerolora;
  using namespace zerolora::bench;
  std::filesystem::path data = kDemoDir / "instructions.json",
                        tokenizer_path = kDemoDir / "stories260K-hf" / "tokenizer.model",
                        compare_path;
  int copies = 52, threads = 0;
  Index max_seq_length = 2048;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string arg = argv[i], value = argv[i + 1];
    if (arg == "--data")
      data = value;
    else if (arg == "--tokenizer")
      tokenizer_path = value;
    else if (arg == "--compare_tokenizer")
      compare_path = value;
    else if (arg == "--copies")
      copies = std::stoi(value);
    else if (arg == "--max_seq_length")
      max_seq_length = std::stoll(value);
    else if (arg == "--threads")
      threads = std::stoi(value);
    else {
      std::fprintf(
          stderr,
          "usage: %s [--data FILE] [--tokenizer FILE] [--compare_tokenizer FILE] [--copies N] "
          "[--max_seq_length L] "
          "[--threads N]\n",
          argv[0]);
      return 2;
    }
  }
  // Build the big file: the records repeated, as one JSON array.
  std::ifstream in(data);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", data.c_str());
    return 1;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string body = buffer.str();
  body = body.substr(body.find('[') + 1, body.rfind(']') - body.find('[') - 1);
  const auto path = std::filesystem::temp_directory_path() / "zerolora_bench_records.json";
  {
    std::ofstream out(path);
    out << "[";
    for (int c = 0; c < copies; ++c) out << (c ? "," : "") << body;
    out << "]";
  }
  Runtime rt(threads);
  print_kv("threads", rt.threads());
  print_kv("file_mib", static_cast<double>(std::filesystem::file_size(path)) / (1 << 20));

  const double t0 = now_seconds();
  const RecordSet set = read_records(path, RecordKind::kInstruction);
  const double t1 = now_seconds();
  const Tokenizer tokenizer(tokenizer_path);
  TokenizeOptions options;
  options.max_seq_length = max_seq_length;
  const auto examples =
      tokenize_records(rt, set.records, PromptTemplate::alpaca(), tokenizer, options);
  const double t2 = now_seconds();
  Index tokens = 0, labelled = 0;
  for (const auto& e : examples) {
    tokens += e.size();
    for (auto l : e.labels) labelled += l != kIgnoreIndex;
  }
  const auto packed = pack(examples, Packing::kBoundaries, max_seq_length);
  const double t3 = now_seconds();
  std::filesystem::remove(path);

  const double records = static_cast<double>(set.records.size());
  print_kv("records", records);
  print_kv("tokens", static_cast<double>(tokens));
  print_kv("label_tokens", static_cast<double>(labelled));
  print_kv("parse_s", t1 - t0);
  print_kv("parse_records_per_s", records / (t1 - t0));
  print_kv("tokenize_s", t2 - t1);
  print_kv("tokenize_tokens_per_s", static_cast<double>(tokens) / (t2 - t1));
  print_kv("pack_boundaries_s", t3 - t2);
  print_kv("packed_sequences", static_cast<double>(packed.size()));
  print_kv("pipeline_s", t3 - t0);
  print_kv("pipeline_records_per_s", records / (t3 - t0));
  print_kv("pipeline_tokens_per_s", static_cast<double>(tokens) / (t3 - t0));
  if (!compare_path.empty()) {
    const Tokenizer other(compare_path);
    const double t4 = now_seconds();
    const auto other_examples =
        tokenize_records(rt, set.records, PromptTemplate::alpaca(), other, options);
    const double t5 = now_seconds();
    Index other_tokens = 0;
    for (const auto& e : other_examples) other_tokens += e.size();
    print_kv("b_tokenizer_format", other.format());
    print_kv("b_tokens", static_cast<double>(other_tokens));
    print_kv("b_tokenize_s", t5 - t4);
    print_kv("b_tokenize_tokens_per_s", static_cast<double>(other_tokens) / (t5 - t4));
    print_kv("b_vs_first_tokenize_time_ratio", (t5 - t4) / (t2 - t1));
  }
  return 0;
}

int main(int argc, char** argv) {
  return zerolora::bench::report_errors("bench_data", [&] { return bench_main(argc, argv); });
}
