#include "data/dataset.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "core/types.hpp"
#include "data/chat.hpp"

namespace zerolora {

TrainingData build_training_data(Runtime& rt, const DataOptions& o, const Tokenizer& tokenizer) {
  if (o.validation_split_percentage < 0 || o.validation_split_percentage >= 100)
    throw ConfigError("validation_split_percentage must be in [0, 100)");
  if (o.train_records && !o.train_file.empty())
    throw ConfigError("give either a train file or records in memory, not both");
  const PromptTemplate prompt = PromptTemplate::named(o.prompt_template);
  TrainingData data;
  const bool has_validation = !o.validation_file.empty() || o.validation_records;
  if (has_validation && o.validation_split_percentage > 0)
    throw ConfigError("give either a validation file or a validation split percentage, not both");
  // Conversations are recognised by their first record unless the format was chosen.
  const bool chat =
      o.kind == RecordKind::kChat ||
      (o.kind == RecordKind::kInstruction &&
       (o.train_records ? first_record_is_chat(*o.train_records, o.columns.instruction)
                        : first_record_is_chat(o.train_file, o.columns.instruction)));
  auto read = [&](const std::filesystem::path& file, const std::optional<InMemoryRecords>& memory) {
    if (memory) return chat ? read_chat_records(*memory) : read_records(*memory, o.kind, o.columns);
    return chat ? read_chat_records(file) : read_records(file, o.kind, o.columns);
  };
  const std::string train_label = o.train_records ? o.train_records->label : o.train_file.string();
  RecordSet train = read(o.train_file, o.train_records);
  data.report.records_read = train.read;
  data.report.skipped_empty_output = train.skipped_empty_output;
  std::vector<Record> validation;
  std::string validation_label = train_label;
  if (has_validation) {
    RecordSet v = read(o.validation_file, o.validation_records);
    data.report.skipped_empty_output += v.skipped_empty_output;
    validation = std::move(v.records);
    validation_label =
        o.validation_records ? o.validation_records->label : o.validation_file.string();
  } else if (o.validation_split_percentage > 0) {
    // run_lora_clm: validation = train[:p%], train = train[p%:]
    const auto n = static_cast<double>(train.records.size());
    const auto k =
        static_cast<std::ptrdiff_t>(std::llround(n * o.validation_split_percentage / 100.0));
    validation.assign(std::make_move_iterator(train.records.begin()),
                      std::make_move_iterator(train.records.begin() + k));
    train.records.erase(train.records.begin(), train.records.begin() + k);
  }
  std::vector<TokenSequence> train_examples, validation_examples;
  if (chat) {
    ChatTemplate chat_template = ChatTemplate::for_tokenizer(tokenizer, o.chat_template);
    if (!o.chat_date.empty()) chat_template.set_date(o.chat_date);
    data.report.chat_template = chat_template.name();
    ChatReport report;
    train_examples = tokenize_chat_records(rt, train.records, chat_template, tokenizer, o.tokenize,
                                           report, train_label);
    data.report.truncated_turns = report.truncated_turns;
    validation_examples = tokenize_chat_records(rt, validation, chat_template, tokenizer,
                                                o.tokenize, report, validation_label);
    if (report.dated > 0) data.report.chat_date = chat_template.date();
  } else {
    train_examples = tokenize_records(rt, train.records, prompt, tokenizer, o.tokenize);
    validation_examples = tokenize_records(rt, validation, prompt, tokenizer, o.tokenize);
  }
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
    throw ConfigError(train_label + ": no training sequences remain (every record skipped, or " +
                      "concatenation produced no full block of max_seq_length tokens)");
  return data;
}

std::vector<std::int32_t> encode_prompt(const Tokenizer& tokenizer, const LlamaConfig& config,
                                        std::string_view text) {
  TokenizeOptions options;
  use_special_tokens(options, tokenizer, &config);
  std::vector<std::int32_t> ids;
  if (options.add_bos) ids.push_back(options.bos_id);
  const auto encoded = tokenizer.encode(text);
  ids.insert(ids.end(), encoded.begin(), encoded.end());
  return ids;
}

void use_special_tokens(TokenizeOptions& options, const Tokenizer& tokenizer,
                        const LlamaConfig* config) {
  options.add_bos = tokenizer.adds_bos();
  // A sentencepiece model's BOS is config.json's, as always; a tokenizer.json says its own.
  const bool config_bos = config && std::string_view(tokenizer.format()) == "sentencepiece";
  options.bos_id =
      config_bos ? static_cast<std::int32_t>(config->bos_token_id) : tokenizer.sequence_start_id();
  options.eos_id = config && !config->eos_token_ids.empty()
                       ? static_cast<std::int32_t>(config->eos_token_ids[0])
                       : tokenizer.eos_id();
  if (options.add_bos && options.bos_id < 0)
    throw ConfigError(tokenizer.path().string() +
                      " puts a BOS token in front of each sequence but no BOS id is known "
                      "(config.json's bos_token_id, tokenizer_config.json's bos_token)");
  if (options.eos_id < 0) options.add_eos = false;
}

}  // namespace zerolora
