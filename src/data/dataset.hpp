// The whole data pipeline in one call: read the train (and validation) file, apply the
// template, tokenize, split, pack. What `zerolora train` and `zerolora data-preview` use.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "data/examples.hpp"
#include "data/records.hpp"
#include "io/llama_config.hpp"

namespace zerolora {

struct DataOptions {
  std::filesystem::path train_file;
  std::filesystem::path validation_file;  // empty: split from the train file
  // Records in memory instead of the files (the Python package's lists and datasets).
  std::optional<InMemoryRecords> train_records, validation_records;
  std::filesystem::path tokenizer;         // empty: the model directory's (tokenizer.hpp)
  double validation_split_percentage = 0;  // first p% of the train records (run_lora_clm)
  RecordKind kind = RecordKind::kInstruction;
  ColumnNames columns;
  std::string prompt_template = "alpaca";  // alpaca, raw, or a template file
  std::string chat_template;  // chat data: a name (data/chat.hpp); empty: the tokenizer's
  std::string chat_date;      // chat data: the date dated templates write; empty: today's
  TokenizeOptions tokenize;
  Packing packing = Packing::kNone;
};

struct DataReport {
  std::int64_t records_read = 0;
  std::int64_t skipped_empty_output = 0;
  std::int64_t train_examples = 0, validation_examples = 0;  // before packing
  std::int64_t truncated = 0;                                // examples cut at max_seq_length
  std::int64_t without_targets = 0;  // examples whose response was truncated away: dropped
  std::int64_t train_tokens = 0, train_label_tokens = 0;
  std::string chat_template;  // chat data: the template used; empty otherwise
  std::string chat_date;      // chat data: the date the template wrote into the text; empty: none
  std::int64_t truncated_turns = 0;  // chat: assistant turns cut by max_seq_length, unlabelled
};

struct TrainingData {
  std::vector<TokenSequence> train, validation;
  DataReport report;
};

TrainingData build_training_data(Runtime& rt, const DataOptions& options,
                                 const Tokenizer& tokenizer);

// BOS and EOS of the tokenized examples: the model's (config.json's bos_token_id and first
// eos_token_id) when a config is given, else the tokenizer's.
void use_special_tokens(TokenizeOptions& options, const Tokenizer& tokenizer,
                        const LlamaConfig* config);

// A prompt as a model sees it at inference: BOS where the tokenizer puts one, then the text.
std::vector<std::int32_t> encode_prompt(const Tokenizer& tokenizer, const LlamaConfig& config,
                                        std::string_view text);

}  // namespace zerolora
