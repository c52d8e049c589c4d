// Prompt templates: a record becomes a source (the prompt, masked from the loss unless
// train_on_inputs) and a target (the response), and the model trains on source + target.
//   alpaca  the Stanford Alpaca / run_lora_clm strings, exactly (with or without input);
//           the output follows "### Response:" directly, as the seed recipe does
//   raw     source = instruction + input, target = output, nothing added; in text mode the
//           whole text is the target
//   file    a template file: either alpaca-lora's JSON ({"prompt_input": ...,
//           "prompt_no_input": ...}) with {instruction} and {input} placeholders, the output
//           appended; or plain text with {instruction}, {input} and {output}, where everything
//           from {output} on is the target
#pragma once

#include <filesystem>
#include <string>

#include "data/records.hpp"

namespace zerolora {

struct Prompt {
  std::string source;
  std::string target;
};

class PromptTemplate {
 public:
  static PromptTemplate alpaca();
  static PromptTemplate raw();
  // Throws IoError / FormatError naming the file.
  static PromptTemplate from_file(const std::filesystem::path& file);
  // "alpaca", "raw", or a path to a template file.
  static PromptTemplate named(const std::string& name_or_path);

  Prompt apply(const Record& record) const;
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  std::string with_input_;     // source template when the input is non-empty
  std::string without_input_;  // source template otherwise
  std::string target_suffix_;  // text after {output} (plain-text template files)
  bool raw_ = false;
};

extern const char* const kAlpacaPromptWithInput;
extern const char* const kAlpacaPromptWithoutInput;

}  // namespace zerolora
