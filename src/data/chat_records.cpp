// Reading chat records (data/chat.hpp): OpenAI-style "messages" and ShareGPT "conversations".
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "data/chat.hpp"
#include "io/json_file.hpp"

namespace zerolora {
namespace {

using json = nlohmann::json;

// ShareGPT's speaker names to roles.
std::string sharegpt_role(const std::string& from) {
  if (from == "human" || from == "user") return "user";
  if (from == "gpt" || from == "assistant" || from == "chatgpt" || from == "model")
    return "assistant";
  if (from == "system") return from;
  return "";
}

std::string string_field(const json& object, const char* key, const std::string& where) {
  const auto it = object.find(key);
  if (it == object.end()) throw FormatError(where + ": no field '" + key + "'");
  if (!it->is_string())
    throw FormatError(where + ": field '" + key + "' is " + it->type_name() +
                      ", expected a string");
  return it->get<std::string>();
}

// One record; `where` names the file and record for errors.
Record chat_record(const json& record, const std::string& where) {
  if (!record.is_object())
    throw FormatError(where + ": is " + std::string(record.type_name()) + ", not an object");
  Record out;
  const bool openai = record.contains("messages");
  const char* field = openai ? "messages" : "conversations";
  const auto it = record.find(field);
  if (it == record.end())
    throw FormatError(where + ": no 'messages' (OpenAI style) or 'conversations' (ShareGPT) field");
  if (!it->is_array()) throw FormatError(where + ": field '" + field + "' is not an array");
  if (record.contains("system") && !record["system"].is_null()) {
    const std::string system = string_field(record, "system", where);
    if (!system.empty()) out.messages.push_back({"system", system});
  }
  for (std::size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string at = where + ": " + field + "[" + std::to_string(i) + "]";
    if (!m.is_object()) throw FormatError(at + " is not an object");
    ChatMessage message;
    if (openai) {
      message.role = string_field(m, "role", at);
      message.content = string_field(m, "content", at);
    } else {
      const std::string from = string_field(m, "from", at);
      message.role = sharegpt_role(from);
      if (message.role.empty())
        throw FormatError(at + ": unknown speaker '" + from +
                          "' (human, gpt, system; or user, assistant)");
      message.content = string_field(m, "value", at);
    }
    if (message.role == "system" && !out.messages.empty() && out.messages[0].role == "system" &&
        i == 0)
      throw FormatError(at + ": a system message, and the record's 'system' field too");
    out.messages.push_back(std::move(message));
  }
  return out;
}

void add_record(RecordSet& set, const json& record, const std::string& where) {
  Record r = chat_record(record, where);
  r.source_index = set.read++;
  const bool trains = std::any_of(r.messages.begin(), r.messages.end(),
                                  [](const ChatMessage& m) { return m.role == "assistant"; });
  if (!trains) {
    ++set.skipped_empty_output;
    return;
  }
  set.records.push_back(std::move(r));
}

json parse_or_throw(std::string_view text, const std::string& where) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    std::string what = e.what();
    if (what.find("UTF-8") != std::string::npos) what = "invalid UTF-8 (" + what + ")";
    throw FormatError(where + ": " + what);
  }
}

// A .json file whose first line is a whole conversation is JSON Lines (as `datasets` reads
// it); a one-line {"data": [...]} is a document.
bool is_json_lines(const std::filesystem::path& file, std::string_view text) {
  if (file.extension() == ".jsonl") return true;
  const std::size_t start = text.find_first_not_of(" \t\r\n");
  if (start == std::string_view::npos || text[start] != '{') return false;
  const std::string_view line = text.substr(start, text.find('\n', start) - start);
  const json first = json::parse(line.begin(), line.end(), nullptr, false);
  return !first.is_discarded() && first.is_object() &&
         (first.contains("messages") || first.contains("conversations"));
}

RecordSet read_chat_records_text(const std::string& label, std::string_view text, bool json_lines) {
  RecordSet set;
  if (json_lines) {
    std::size_t at = 0;
    for (std::int64_t line = 1; at < text.size(); ++line) {
      std::size_t end = text.find('\n', at);
      if (end == std::string::npos) end = text.size();
      const std::string_view row = text.substr(at, end - at);
      at = end + 1;
      if (row.find_first_not_of(" \t\r") == std::string_view::npos) continue;
      const std::string where =
          label + ": line " + std::to_string(line) + " (record " + std::to_string(set.read) + ")";
      add_record(set, parse_or_throw(row, where), where);
    }
    return set;
  }
  const json doc = parse_or_throw(text, label);
  const json* records = &doc;
  if (doc.is_object()) {  // {"data": [records]}: the one array of objects it holds
    records = nullptr;
    for (const auto& [key, value] : doc.items())
      if (value.is_array()) {
        if (records)
          throw FormatError(label + ": the object holds several arrays; give one array of records");
        records = &value;
      }
    if (!records) records = &doc;  // a single record
  }
  if (records->is_object()) {
    add_record(set, *records, label + ": record 0");
    return set;
  }
  if (!records->is_array()) throw FormatError(label + ": expected an array of chat records");
  for (std::size_t i = 0; i < records->size(); ++i)
    add_record(set, (*records)[i], label + ": record " + std::to_string(i));
  return set;
}

}  // namespace

RecordSet read_chat_records(const std::filesystem::path& file) {
  const std::string text = read_text_file(file);
  return read_chat_records_text(file.string(), text, is_json_lines(file, text));
}

RecordSet read_chat_records(const InMemoryRecords& records) {
  return read_chat_records_text(records.label, records.jsonl, true);
}

namespace {

// Collects the keys of the first object and, for a wrapper ({"data": [records]}), of the first
// object nested in it, then stops the parse.
class FirstRecordKeys : public nlohmann::json_sax<json> {
 public:
  std::vector<std::string> keys, nested_keys;
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override {
    ++depth_;
    if (record_depth_ == 0)
      record_depth_ = depth_;
    else if (nested_depth_ == 0 && depth_ == record_depth_ + 2)
      nested_depth_ = depth_;
    return true;
  }
  bool end_object() override {  // the first record, or the wrapper's first one, ended: stop
    const bool done = depth_ == record_depth_ || depth_ == nested_depth_;
    --depth_;
    return !done;
  }
  bool start_array(std::size_t) override {
    ++depth_;
    return true;
  }
  bool end_array() override {
    --depth_;
    return true;
  }
  bool key(string_t& key) override {
    if (depth_ == record_depth_) keys.push_back(key);
    if (depth_ == nested_depth_) nested_keys.push_back(key);
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
    return false;
  }

 private:
  int depth_ = 0, record_depth_ = 0, nested_depth_ = 0;
};

bool first_record_is_chat_text(std::string_view text, const std::string& instruction_column) {
  FirstRecordKeys sax;
  json::sax_parse(text, &sax, json::input_format_t::json, false);
  auto is_chat = [&](const std::vector<std::string>& keys) {
    bool chat = false;
    for (const auto& k : keys) {
      if (k == instruction_column) return false;
      chat = chat || k == "messages" || k == "conversations";
    }
    return chat;
  };
  return is_chat(sax.keys) || (sax.keys.size() == 1 && is_chat(sax.nested_keys));
}

}  // namespace

bool first_record_is_chat(const std::filesystem::path& file,
                          const std::string& instruction_column) {
  if (file.extension() == ".txt") return false;
  try {
    return first_record_is_chat_text(read_text_file(file), instruction_column);
  } catch (const Error&) {
    return false;  // the reader proper reports it
  }
}

bool first_record_is_chat(const InMemoryRecords& records, const std::string& instruction_column) {
  return first_record_is_chat_text(records.jsonl, instruction_column);
}

}  // namespace zerolora
