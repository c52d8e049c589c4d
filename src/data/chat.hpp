// Chat data: conversations read from JSON / JSON Lines records, rendered with a model's chat
// template, and tokenized with the loss on the assistant turns.
//   records   OpenAI style {"messages": [{"role": ..., "content": ...}, ...]} or ShareGPT's
//             {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}, ...]}, with an
//             optional top-level "system" string that becomes the first message
//   templates named renderers whose text equals Transformers' apply_chat_template for the
//             released template strings of each family (the tests prove it on fixtures made
//             with those strings): llama3 (Llama 3 Instruct), llama3.1 (3.1 / 3.3 Instruct,
//             no tools), llama3.2 (3.2 Instruct, no tools: its system header dated today, as
//             Transformers renders it), qwen2.5, chatml, mistral (v0.3 Instruct, no tools),
//             mistral-v7 (Mistral Small 3: a conversation without a system message gets
//             Mistral's default one, dated today), llama2-chat, zephyr. A
//             tokenizer_config.json template is recognised when it is one of those, byte for byte
//             (whitespace aside); anything else is refused, saying which name to pass.
//   labels    the assistant's content and its end-of-turn marker train; everything else is
//             masked (-100) unless train_on_inputs. A turn's span is found as the seed recipe
//             finds the prompt: the tokens of the text before it, counted on their own.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "data/examples.hpp"
#include "data/records.hpp"
#include "data/tokenizer.hpp"

namespace zerolora {

// A conversation rendered to text, with the byte ranges that train.
struct RenderedChat {
  struct Span {
    std::size_t begin, end;  // [begin, end) of text: an assistant turn's content and its end
  };
  std::string text;
  std::vector<Span> trainable;
};

class ChatTemplate {
 public:
  // UsageError listing the names when the name is unknown.
  static ChatTemplate named(const std::string& name);
  // The model's template: tokenizer_config.json's (recognised by its text) unless `name`
  // (--chat_template) is given. ConfigError saying what to pass when it is not recognised.
  static ChatTemplate for_tokenizer(const Tokenizer& tokenizer, const std::string& name);
  // The named template a template string is (whitespace aside), or nullopt.
  static std::optional<std::string> recognise(const std::string& template_text);
  static std::vector<std::string> names();
  // YYYY-MM-DD naming a day that exists (what set_date takes).
  static bool valid_date(const std::string& text);

  // Throws FormatError for a conversation the template refuses (roles that do not alternate
  // where it requires them to, an unknown role), as its raise_exception would.
  // add_generation_prompt: end with the header of the assistant's next turn, as for
  // inference (apply_chat_template's flag of that name).
  RenderedChat render(const std::vector<ChatMessage>& messages, const std::string& bos_token,
                      const std::string& eos_token, bool add_generation_prompt = false) const;
  const std::string& name() const { return name_; }
  // Whether the template writes its date into this conversation's text (strftime_now: Llama
  // 3.2's system header always, Mistral v7's default system prompt where there is no system
  // message).
  bool writes_date(const std::vector<ChatMessage>& messages) const;
  // The date such a template writes, YYYY-MM-DD: the local date when the template was made
  // (what Transformers' strftime_now gives), or the one set. set_date throws UsageError for
  // text that is not a valid date of that form.
  const std::string& date() const { return date_; }
  void set_date(const std::string& date);

 private:
  explicit ChatTemplate(std::string name);
  std::string name_, date_;
};

struct ChatReport {
  std::int64_t truncated_turns = 0;  // assistant turns cut by max_seq_length: their labels dropped
  std::int64_t dated = 0;            // conversations whose text holds the template's date
};

// Chat records from a .json (an array of records, or {"key": [records]}) or .jsonl file. A
// record without an assistant message has nothing to train on: skipped and counted.
// Errors name the file, the record (and line) and the field.
RecordSet read_chat_records(const std::filesystem::path& file);
RecordSet read_chat_records(const InMemoryRecords& records);  // JSON Lines in memory

// Whether the first record of a JSON / JSON Lines file is a conversation (has "messages" or
// "conversations" and no `instruction_column`): read only as far as that record.
bool first_record_is_chat(const std::filesystem::path& file, const std::string& instruction_column);
bool first_record_is_chat(const InMemoryRecords& records, const std::string& instruction_column);

// One conversation to a training sequence. The template supplies BOS / end-of-turn tokens, so
// none are added here. A turn cut by max_seq_length keeps no labels (counted in the report).
TokenSequence tokenize_chat(const Tokenizer& tokenizer, const RenderedChat& chat,
                            const TokenizeOptions& options, ChatReport& report);

// Rendered chat text to ids: the template wrote BOS and the turn markers as text, and a
// tokenizer.json finds them as its special tokens; for a sentencepiece model, whose encoder
// would spell "<s>" out, its BOS and EOS strings are cut out and given their ids.
std::vector<std::int32_t> encode_chat_text(const Tokenizer& tokenizer, std::string_view text);

// Every record (their messages) through the template and tokenizer, in parallel, in order.
// `file` names the records' file in errors.
std::vector<TokenSequence> tokenize_chat_records(Runtime& rt, const std::vector<Record>& records,
                                                 const ChatTemplate& chat_template,
                                                 const Tokenizer& tokenizer,
                                                 const TokenizeOptions& options, ChatReport& report,
                                                 const std::string& file);

}  // namespace zerolora
