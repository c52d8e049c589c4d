// `zerolora tokenize`: text to token ids (and back) with a model's tokenizer, as JSON Lines, so
// a user can see what a tokenizer does with their text, and the tests can compare it with
// Hugging Face tokenizers.
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "apps/commands.hpp"
#include "core/error.hpp"
#include "data/tokenizer.hpp"

namespace zerolora::cli {
namespace {

struct TokenizeOptions {
  std::string tokenizer, text, input, output = "-";
};

nlohmann::ordered_json tokenize_one(const Tokenizer& tokenizer, const std::string& text) {
  const auto ids = tokenizer.encode(text);
  return {{"ids", ids},
          {"decoded", tokenizer.decode(ids, false)},
          {"decoded_skip_special", tokenizer.decode(ids, true)}};
}

int run_tokenize(const TokenizeOptions& o) {
  const Tokenizer tokenizer(o.tokenizer);
  std::ofstream file;
  if (o.output != "-") {
    file.open(o.output);
    if (!file) throw IoError(o.output + ": cannot write");
  }
  std::ostream& out = o.output == "-" ? std::cout : file;
  auto write = [&](const nlohmann::ordered_json& line) {
    out << line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) << "\n";
  };
  if (o.input.empty()) {
    write(tokenize_one(tokenizer, o.text));
    return 0;
  }
  // One JSON string per line: any text, control characters and invalid UTF-8 escapes included.
  std::ifstream in(o.input);
  if (!in) throw IoError(o.input + ": cannot read");
  std::string line;
  for (std::int64_t n = 1; std::getline(in, line); ++n) {
    nlohmann::json text;
    try {
      text = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(o.input + ":" + std::to_string(n) + ": not a JSON string (" + e.what() +
                        ")");
    }
    if (!text.is_string())
      throw FormatError(o.input + ":" + std::to_string(n) + ": not a JSON string");
    try {
      write(tokenize_one(tokenizer, text.get<std::string>()));
    } catch (const Error& e) {
      throw FormatError(o.input + ":" + std::to_string(n) + ": " + e.what());
    }
  }
  return 0;
}

}  // namespace

Command add_tokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "tokenize",
      "Token ids of a text (or of each line of a file) as JSON Lines: ids, and the ids decoded "
      "back with and without special tokens; no BOS/EOS added");
  auto o = std::make_shared<TokenizeOptions>();
  cmd->add_option("--tokenizer,--model_name_or_path,--model", o->tokenizer,
                  "A tokenizer.json, a sentencepiece tokenizer.model, or a model directory "
                  "(tokenizer.json first, as Transformers)")
      ->required();
  auto* text = cmd->add_option("--text", o->text, "The text to tokenize");
  cmd->add_option("--input", o->input, "A file of JSON strings, one per line, each tokenized")
      ->excludes(text);
  cmd->add_option("--output", o->output, "Output file (- for stdout)")->capture_default_str();
  return [o] { return run_tokenize(*o); };
}

}  // namespace zerolora::cli
