// `zerolora data-preview`: the first N sequences exactly as training will see them, as JSON
// Lines (text, input ids, labels, segments), so a user can check what trains.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "apps/commands.hpp"
#include "apps/data_flags.hpp"
#include "apps/flag_checks.hpp"
#include "core/error.hpp"
#include "ops/cross_entropy.hpp"

namespace zerolora::cli {
namespace {

struct PreviewOptions {
  DataFlags data;
  std::string model, output = "-";
  std::int64_t num_examples = 10;
  bool validation = false;
};

// The sequence's text with each run of tokens that trains between ⟦ and ⟧. Runs are cut from
// decodes of growing prefixes, so that decoders that join tokens with context (sentencepiece's
// leading space) show the text as it is.
std::string marked_text(const Tokenizer& tokenizer, const TokenSequence& s) {
  std::string out, previous;
  std::size_t run_start = 0;
  const std::size_t n = s.input_ids.size();
  for (std::size_t i = 1; i <= n; ++i) {
    const bool run_ends =
        i == n || (s.labels[i] != kIgnoreIndex) != (s.labels[run_start] != kIgnoreIndex);
    if (!run_ends) continue;
    std::string upto = tokenizer.decode(std::span(s.input_ids).first(i));
    std::string piece =
        upto.compare(0, previous.size(), previous) == 0
            ? upto.substr(previous.size())
            : tokenizer.decode(std::span(s.input_ids).subspan(run_start, i - run_start));
    out += s.labels[run_start] != kIgnoreIndex ? "\u27e6" + piece + "\u27e7" : piece;
    previous = std::move(upto);
    run_start = i;
  }
  return out;
}

int run_preview(const PreviewOptions& o) {
  std::unique_ptr<LlamaConfig> config;
  if (!o.model.empty())
    config = std::make_unique<LlamaConfig>(
        LlamaConfig::load(std::filesystem::path(o.model) / "config.json"));
  if (o.model.empty() && o.data.tokenizer.empty())
    throw UsageError("give --model_name_or_path or --tokenizer");
  const Tokenizer tokenizer = config ? open_model_tokenizer(o.model, *config, o.data.tokenizer)
                                     : Tokenizer(o.data.tokenizer);
  Runtime rt(0);
  const DataOptions options = o.data.resolve(tokenizer, config.get());
  const TrainingData data = build_training_data(rt, options, tokenizer);
  const auto& set = o.validation ? data.validation : data.train;

  std::ofstream file;
  if (o.output != "-") {
    file.open(o.output);
    if (!file) throw IoError(o.output + ": cannot write");
  }
  std::ostream& out = o.output == "-" ? std::cout : file;
  const std::size_t n = std::min<std::size_t>(set.size(), static_cast<std::size_t>(o.num_examples));
  for (std::size_t i = 0; i < n; ++i) {
    const TokenSequence& s = set[i];
    nlohmann::json segments = nlohmann::json::array();
    std::int64_t at = 0, labelled = 0;
    for (auto len : s.segment_lengths) {
      segments.push_back({at, len});
      at += len;
    }
    for (auto l : s.labels) labelled += l != kIgnoreIndex;
    out << nlohmann::ordered_json{{"index", i},
                                  {"tokens", s.size()},
                                  {"label_tokens", labelled},
                                  {"segments", segments},
                                  {"text", tokenizer.decode(s.input_ids)},
                                  {"marked_text", marked_text(tokenizer, s)},
                                  {"input_ids", s.input_ids},
                                  {"labels", s.labels}}
               .dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace)
        << "\n";
  }
  const DataReport& r = data.report;
  std::fprintf(
      stderr,
      "data-preview: %lld records read, %lld skipped (empty output), %lld train / %lld validation "
      "examples, "
      "%lld truncated at %lld tokens; %zu train sequences, %lld tokens (%lld with labels); wrote "
      "%zu\n",
      static_cast<long long>(r.records_read), static_cast<long long>(r.skipped_empty_output),
      static_cast<long long>(r.train_examples), static_cast<long long>(r.validation_examples),
      static_cast<long long>(r.truncated), static_cast<long long>(options.tokenize.max_seq_length),
      data.train.size(), static_cast<long long>(r.train_tokens),
      static_cast<long long>(r.train_label_tokens), n);
  std::fprintf(stderr, "data-preview: tokenizer %s (%s)", tokenizer.path().c_str(),
               tokenizer.format());
  if (!r.chat_template.empty())
    std::fprintf(stderr, "; chat template %s%s%s, %lld assistant turns cut by max_seq_length",
                 r.chat_template.c_str(), r.chat_date.empty() ? "" : " dated ", r.chat_date.c_str(),
                 static_cast<long long>(r.truncated_turns));
  std::fprintf(stderr, "\n");
  return 0;
}

}  // namespace

Command add_data_preview(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "data-preview",
      "Write the first N training sequences as JSON Lines: text, marked_text (the tokens "
      "that train between \u27e6 and \u27e7), input_ids, labels (-100 = no loss) and causal "
      "segments, exactly as training sees them");
  auto o = std::make_shared<PreviewOptions>();
  cmd->add_option("--model_name_or_path,--model", o->model,
                  "HF model directory: its tokenizer and the BOS/EOS ids of its config.json");
  add_data_flags(*cmd, o->data);
  cmd->add_option("--num_examples", o->num_examples, "Sequences to write")
      ->capture_default_str()
      ->check(whole_in(1));
  cmd->add_flag("--validation", o->validation,
                "Preview the validation set instead of the training set");
  cmd->add_option("--output", o->output, "Output file (- for stdout)")->capture_default_str();
  return [o] { return run_preview(*o); };
}

}  // namespace zerolora::cli
