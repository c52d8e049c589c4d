// The data flags shared by `train` and `data-preview`, named as run_lora_clm / HF Trainer.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>

#include "data/dataset.hpp"
#include "data/tokenizer.hpp"
#include "io/llama_config.hpp"

namespace zerolora::cli {

struct DataFlags {
  std::string train_file, validation_file;
  std::string tokenizer;  // empty: the model directory's
  double validation_split_percentage = 0;
  std::string data_format = "instruction";
  ColumnNames columns;
  std::string prompt_template = "alpaca";
  std::string chat_template, chat_date;
  std::int64_t max_seq_length = 2048;
  bool train_on_inputs = false;
  bool dataset_concatenation = false;
  std::string packing = "none";

  // The options; UsageError for flags that conflict. BOS/EOS are left to the caller.
  DataOptions options() const;
  // The options with BOS/EOS from the model config when given (else the tokenizer's).
  DataOptions resolve(const Tokenizer& tokenizer, const LlamaConfig* config) const;
};

// Registers the flags on `cmd`; `train_file_required` for commands that need data.
void add_data_flags(CLI::App& cmd, DataFlags& flags);
// --chat_template and --chat_date (also generate's); `when` opens their help ("Chat data").
void add_chat_template_flags(CLI::App& cmd, std::string& chat_template, std::string& chat_date,
                             const std::string& when);

}  // namespace zerolora::cli
