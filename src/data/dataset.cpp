#include "data/dataset.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "core/types.hpp"

namespace zerolora {

TrainingData build_training_data(Runtime& rt, const DataOptions& o, const Tokenizer& tokenizer) {
  if (o.validation_split_percentage < 0 || o.validation_split_percentage >= 100)
    throw ConfigError("validation_split_percentage must be in [0, 100)");
  if (!o.validation_file.empty() && o.validation_split_percentage > 0)
    throw ConfigError("give either a validation file or a validation split percentage, not both");
  const PromptTemplate prompt = PromptTemplate::named(o.prompt_template);
  TrainingData data;
  RecordSet train = read_records(o.train_file, o.kind, o.columns);
  data.report.records_read = train.read;
  data.report.skipped_empty_output = train.skipped_empty_output;
  std::vector<Record> validation;
  if (!o.validation_file.empty()) {
    RecordSet v = read_records(o.validation_file, o.kind, o.columns);
    data.report.skipped_empty_output += v.skipped_empty_output;
    validation = std::move(v.records);
  } else if (o.validation_split_percentage > 0) {
    // run_lora_clm: validation = train[:p%], train = train[p%:]
    const auto n = static_cast<double>(train.records.size());
    const auto k =
        static_cast<std::ptrdiff_t>(std::llround(n * o.validation_split_percentage / 100.0));
    validation.assign(std::make_move_iterator(train.records.begin()),
                      std::make_move_iterator(train.records.begin() + k));
    train.records.erase(train.records.begin(), train.records.begin() + k);
  }
  auto train_examples = tokenize_records(rt, train.records, prompt, tokenizer, o.tokenize);
  auto validation_examples = tokenize_records(rt, validation, prompt, tokenizer, o.tokenize);
  data.report.train_examples = static_cast<std::int64_t>(train_examples.size());
  data.report.validation_examples = static_cast<std::int64_t>(validation_examples.size());
  for (const auto& e : train_examples)
    if (e.size() == o.tokenize.max_seq_length && e.input_ids.back() != o.tokenize.eos_id)
      ++data.report.truncated;
  // An example whose prompt fills max_seq_length has nothing left to learn from (HF would
  // train on it with a NaN loss). Dropped unless packing mixes it into blocks as HF does.
  if (o.packing != Packing::kConcat) {
    auto no_targets = [](const TokenSequence& e) {
      return std::all_of(e.labels.begin() + 1, e.labels.end(),
                         [](std::int32_t l) { return l == kIgnoreIndex; });
    };
    const auto before = train_examples.size();
    std::erase_if(train_examples, no_targets);
    std::erase_if(validation_examples, no_targets);
    data.report.without_targets = static_cast<std::int64_t>(before - train_examples.size());
  }
  data.train = pack(std::move(train_examples), o.packing, o.tokenize.max_seq_length);
  data.validation = pack(std::move(validation_examples), o.packing, o.tokenize.max_seq_length);
  for (const auto& s : data.train) {
    data.report.train_tokens += s.size();
    for (auto l : s.labels) data.report.train_label_tokens += l != kIgnoreIndex;
  }
  if (data.train.empty())
    throw ConfigError(o.train_file.string() +
                      ": no training sequences remain (every record skipped, or " +
                      "concatenation produced no full block of max_seq_length tokens)");
  return data;
}

void use_special_tokens(TokenizeOptions& options, const Tokenizer& tokenizer,
                        const LlamaConfig* config) {
  options.bos_id = config ? static_cast<std::int32_t>(config->bos_token_id) : tokenizer.bos_id();
  options.eos_id = config && !config->eos_token_ids.empty()
                       ? static_cast<std::int32_t>(config->eos_token_ids[0])
                       : tokenizer.eos_id();
}

}  // namespace zerolora
