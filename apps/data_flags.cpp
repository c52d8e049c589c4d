#include "apps/data_flags.hpp"

#include "apps/flag_checks.hpp"
#include "apps/hf_args.hpp"
#include "core/error.hpp"
#include "data/chat.hpp"

namespace zerolora::cli {

void add_chat_template_flags(CLI::App& cmd, std::string& chat_template, std::string& chat_date,
                             const std::string& when) {
  std::string names;
  for (const auto& n : ChatTemplate::names()) names += (names.empty() ? "" : ", ") + n;
  cmd.add_option("--chat_template", chat_template,
                 when + ": the template, one of " + names +
                     " (default: the tokenizer's, recognised from tokenizer_config.json)")
      ->check(CLI::IsMember(ChatTemplate::names()));
  cmd.add_option("--chat_date", chat_date,
                 when +
                     ": the date, YYYY-MM-DD, that templates which write one (llama3.2's "
                     "system header, mistral-v7's default system prompt) write; default "
                     "today's, as apply_chat_template renders. Give one for a run that "
                     "renders the same text on any day (a resume on another day needs it)")
      ->check(CLI::Validator(
          [](std::string& text) {
            return ChatTemplate::valid_date(text) ? std::string()
                                                  : "must be a date YYYY-MM-DD, got '" + text + "'";
          },
          "YYYY-MM-DD"));
}

void add_data_flags(CLI::App& cmd, DataFlags& f) {
  cmd.add_option("--train_file", f.train_file,
                 "Training data: .json (array of records), .jsonl (one record per line) or .txt "
                 "(text mode, "
                 "one record per line)")
      ->required();
  cmd.add_option("--tokenizer,--tokenizer_name", f.tokenizer,
                 "Tokenizer: a tokenizer.json, a sentencepiece tokenizer.model, or a directory "
                 "holding one (default: the model directory's, tokenizer.json first, as "
                 "Transformers reads it)");
  cmd.add_option("--validation_file", f.validation_file,
                 "Validation data, same formats as --train_file");
  cmd.add_option("--validation_split_percentage", f.validation_split_percentage,
                 "Without --validation_file: the first P% of the training records become the "
                 "validation set "
                 "(as run_lora_clm)")
      ->capture_default_str()
      ->check(finite_in(0.0, 99.0));
  cmd.add_option("--data_format", f.data_format,
                 "instruction: records with instruction/input/output (Alpaca), or conversations "
                 "when the first record has 'messages' / 'conversations' and no instruction; "
                 "chat: conversations (OpenAI 'messages' with role/content, or ShareGPT "
                 "'conversations' with from/value; optional 'system'), rendered with the chat "
                 "template, loss on the assistant turns; text: one text column, all tokens "
                 "trained (continued pre-training)")
      ->capture_default_str()
      ->check(CLI::IsMember({"instruction", "chat", "text"}));
  add_chat_template_flags(cmd, f.chat_template, f.chat_date, "Chat data");
  cmd.add_option("--instruction_column_name", f.columns.instruction,
                 "Record field holding the instruction")
      ->capture_default_str();
  cmd.add_option("--input_column_name", f.columns.input, "Record field holding the optional input")
      ->capture_default_str();
  cmd.add_option("--output_column_name", f.columns.output, "Record field holding the response")
      ->capture_default_str();
  cmd.add_option("--text_column_name", f.columns.text,
                 "Record field holding the text (text format)")
      ->capture_default_str();
  cmd.add_option("--template", f.prompt_template,
                 "Prompt template: alpaca (Stanford Alpaca strings, as the seed recipe), raw "
                 "(fields concatenated "
                 "as is), or a template file (plain text with {instruction} {input} {output}, or "
                 "alpaca-lora JSON)")
      ->capture_default_str();
  cmd.add_option("--max_seq_length", f.max_seq_length,
                 "Tokens per sequence at most (BOS included; longer examples are truncated, EOS "
                 "added when room "
                 "remains)")
      ->capture_default_str()
      ->check(whole_in(2, 1 << 20));
  add_hf_bool(
      cmd, "train_on_inputs", f.train_on_inputs,
      "Train on the prompt tokens too (false: the prompt is masked from the loss, label -100)");
  add_hf_bool(cmd, "dataset_concatenation", f.dataset_concatenation,
              "Concatenate all examples and cut max_seq_length blocks, dropping the remainder "
              "(run_lora_clm's flag; the same as --packing concat)");
  cmd.add_option("--packing", f.packing,
                 "none: one example per sequence; concat: as --dataset_concatenation; boundaries: "
                 "whole examples "
                 "packed into max_seq_length blocks, each its own causal segment (no cross-example "
                 "attention, "
                 "nothing dropped)")
      ->capture_default_str()
      ->check(CLI::IsMember({"none", "concat", "boundaries"}));
}

DataOptions DataFlags::resolve(const Tokenizer& tokenizer, const LlamaConfig* config) const {
  DataOptions o = options();
  use_special_tokens(o.tokenize, tokenizer, config);
  return o;
}

DataOptions DataFlags::options() const {
  if (dataset_concatenation && packing != "none" && packing != "concat")
    throw UsageError("--dataset_concatenation conflicts with --packing " + packing);
  DataOptions o;
  o.train_file = train_file;
  o.validation_file = validation_file;
  o.tokenizer = tokenizer;
  o.validation_split_percentage = validation_split_percentage;
  o.kind = data_format == "text"   ? RecordKind::kText
           : data_format == "chat" ? RecordKind::kChat
                                   : RecordKind::kInstruction;
  o.chat_template = chat_template;
  o.chat_date = chat_date;
  o.columns = columns;
  o.prompt_template = data_format == "text" ? "raw" : prompt_template;
  o.tokenize.max_seq_length = max_seq_length;
  o.tokenize.train_on_inputs = train_on_inputs || data_format == "text";
  o.packing = dataset_concatenation ? Packing::kConcat : parse_packing(packing);
  return o;
}

}  // namespace zerolora::cli
