#include "data/records.hpp"

#include <algorithm>
#include <array>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.hpp"
#include "core/mapped_file.hpp"
#include "data/unicode_text.hpp"

namespace zerolora {
namespace {

using json = nlohmann::json;

// Streams records out of JSON without building a document: a SAX handler that knows the shape
// [ {"col": "string", ...}, ... ] (or one object, for a JSON Lines line) and turns any other
// shape into an error naming the record and field.
class RecordReader : public nlohmann::json_sax<json> {
 public:
  RecordReader(std::string file, RecordKind kind, const ColumnNames& columns,
               std::vector<Record>& out)
      : file_(std::move(file)), kind_(kind), columns_(columns), out_(out) {}

  // JSON Lines: the next parse is one object, record `index`, at `line`.
  void begin_line(std::int64_t index, std::int64_t line) {
    depth_ = 1;
    index_ = index;
    line_ = line;
    single_object_ = true;
  }

  bool null() override { return scalar("null"); }
  bool boolean(bool) override { return scalar("a boolean"); }
  bool number_integer(number_integer_t) override { return scalar("a number"); }
  bool number_unsigned(number_unsigned_t) override { return scalar("a number"); }
  bool number_float(number_float_t, const string_t&) override { return scalar("a number"); }
  bool binary(binary_t&) override { return scalar("binary data"); }

  bool string(string_t& value) override {
    if (depth_ == 0) fail("expected a JSON array of records, found a string");
    if (depth_ == 1) fail_record("is a string, not an object");
    if (depth_ == 2) {
      if (std::string* slot = column_slot()) *slot = std::move(value);
    }
    return true;
  }

  bool start_object(std::size_t) override {
    if (depth_ == 0) fail("expected a JSON array of records (or JSON Lines), found an object");
    if (depth_ == 1) {
      current_ = Record{};
      seen_ = {false, false, false};
    } else if (depth_ == 2) {
      nested_value("an object");
    }
    ++depth_;
    return true;
  }

  bool end_object() override {
    --depth_;
    if (depth_ == 1) finish_record();
    return true;
  }

  bool start_array(std::size_t) override {
    if (depth_ == 1) fail_record("is an array, not an object");
    if (depth_ == 2) nested_value("an array");
    ++depth_;
    return true;
  }

  bool end_array() override {
    --depth_;
    return true;
  }

  bool key(string_t& key) override {
    if (depth_ == 2) key_ = std::move(key);
    return true;
  }

  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& e) override {
    std::string where = single_object_ ? "line " + std::to_string(line_) + " (record " +
                                             std::to_string(index_) + ")"
                                       : "byte " + std::to_string(position) +
                                             " (in or after record " + std::to_string(index_) + ")";
    std::string what = e.what();
    if (what.find("UTF-8") != std::string::npos) what = "invalid UTF-8 (" + what + ")";
    throw FormatError(file_ + ": " + where + ": " + what);
  }

  std::int64_t records_seen() const { return index_; }

 private:
  bool scalar(const char* kind) {
    if (depth_ == 0) fail(std::string("expected a JSON array of records, found ") + kind);
    if (depth_ == 1) fail_record(std::string("is ") + kind + ", not an object");
    if (depth_ == 2 && column_slot()) {
      if (std::string(kind) == "null" && key_ == columns_.input &&
          kind_ == RecordKind::kInstruction) {
        seen_[1] = true;  // a null input means "no input", as an empty string would
        return true;
      }
      fail_record("field '" + key_ + "' is " + kind + ", expected a string");
    }
    return true;
  }

  void nested_value(const char* kind) {
    if (column_slot()) fail_record("field '" + key_ + "' is " + kind + ", expected a string");
  }

  // The record field the current key fills, or null for a column we do not use.
  std::string* column_slot() {
    if (kind_ == RecordKind::kText) {
      if (key_ == columns_.text) {
        seen_[2] = true;
        return &current_.output;
      }
      return nullptr;
    }
    if (key_ == columns_.instruction) {
      seen_[0] = true;
      return &current_.instruction;
    }
    if (key_ == columns_.input) {
      seen_[1] = true;
      return &current_.input;
    }
    if (key_ == columns_.output) {
      seen_[2] = true;
      return &current_.output;
    }
    return nullptr;
  }

  void finish_record() {
    if (kind_ == RecordKind::kInstruction) {
      if (!seen_[0]) fail_record("has no field '" + columns_.instruction + "'");
      if (!seen_[2]) fail_record("has no field '" + columns_.output + "'");
    } else if (!seen_[2]) {
      fail_record("has no field '" + columns_.text + "'");
    }
    out_.push_back(std::move(current_));
    ++index_;
  }

  [[noreturn]] void fail_record(const std::string& what) const {
    std::string where = "record " + std::to_string(index_);
    if (single_object_) where += " (line " + std::to_string(line_) + ")";
    throw FormatError(file_ + ": " + where + " " + what);
  }
  [[noreturn]] void fail(const std::string& what) const { throw FormatError(file_ + ": " + what); }

  std::string file_;
  RecordKind kind_;
  const ColumnNames& columns_;
  std::vector<Record>& out_;
  int depth_ = 0;
  bool single_object_ = false;
  std::int64_t index_ = 0, line_ = 0;
  std::string key_;
  Record current_;
  std::array<bool, 3> seen_{};
};

std::string_view as_text(const MappedFile& file) {
  return {reinterpret_cast<const char*>(file.bytes().data()), file.size()};
}

void read_json_array(std::string_view text, RecordReader& reader) {
  json::sax_parse(text.begin(), text.end(), &reader);
}

// Calls fn(line_number, line) for every line of text (1-based; without the newline).
template <class F>
void for_each_line(std::string_view text, F&& fn) {
  std::int64_t line = 0;
  std::size_t start = 0;
  while (start < text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    fn(++line, text.substr(start, end - start));
    start = end + 1;
  }
}

void read_json_lines(std::string_view text, RecordReader& reader) {
  for_each_line(text, [&](std::int64_t line, std::string_view row) {
    if (row.find_first_not_of(" \t\r") == std::string_view::npos) return;
    reader.begin_line(reader.records_seen(), line);
    json::sax_parse(row.begin(), row.end(), &reader);
  });
}

// A .json file that starts with '{' is JSON Lines when its first line is a whole object.
bool first_line_is_object(std::string_view text) {
  const std::size_t end = text.find('\n');
  const std::string_view line = text.substr(0, end);
  const json parsed = json::parse(line.begin(), line.end(), nullptr, false);
  return !parsed.is_discarded() && parsed.is_object();
}

bool is_array_of_objects(const json& value) {
  return value.is_array() && !value.empty() &&
         std::all_of(value.begin(), value.end(), [](const json& v) { return v.is_object(); });
}

// One JSON object that is not JSON Lines: the shapes people bring, where unambiguous.
//   {"data": [records]}             one key holding an array of records (any key name)
//   {"instruction": [..], ...}      columns of equal length (pandas' orient="list", which
//                                   `datasets` also reads)
//   {"instruction": "..", ...}      a single record
void read_wrapped_records(const std::string& label, std::string_view text, RecordReader& reader) {
  const json doc = json::parse(text.begin(), text.end(), nullptr, false);
  if (doc.is_discarded())
    throw FormatError(label +
                      ": neither JSON Lines (its first line is not a whole JSON object) nor one "
                      "JSON document (it does not parse as JSON); expected an array of records "
                      "[{...}, ...] or one record per line");
  if (!doc.is_object())
    throw FormatError(label + ": expected an array of records or one record per line");
  std::vector<std::string> arrays, keys;
  bool columns = !doc.empty(), scalars = !doc.empty();
  std::size_t rows = 0;
  for (const auto& [key, value] : doc.items()) {
    keys.push_back(key);
    if (is_array_of_objects(value)) arrays.push_back(key);
    if (!value.is_array() || (rows > 0 && value.size() != rows) || value.empty())
      columns = false;
    else
      rows = value.size();
    if (value.is_array() || value.is_object()) scalars = false;
  }
  auto joined = [](const std::vector<std::string>& names) {
    std::string out;
    for (const auto& n : names) out += (out.empty() ? "'" : ", '") + n + "'";
    return out;
  };
  if (arrays.size() == 1) return read_json_array(doc[arrays.front()].dump(), reader);
  if (arrays.size() > 1)
    throw FormatError(label + ": the object holds several arrays of records (" + joined(arrays) +
                      "); give a file with one of them (an array of records, or JSON Lines)");
  if (columns) {  // {"col": [v0, v1, ...], ...} -> [{"col": v0, ...}, ...]
    json records = json::array();
    for (std::size_t i = 0; i < rows; ++i) {
      json record = json::object();
      for (const auto& [key, value] : doc.items()) record[key] = value[i];
      records.push_back(std::move(record));
    }
    return read_json_array(records.dump(), reader);
  }
  if (scalars) return read_json_array(json::array({doc}).dump(), reader);
  throw FormatError(label +
                    ": expected an array of records [{...}, ...], one record per line "
                    "(JSON Lines), or an object holding one array of records ({\"data\": "
                    "[...]}); found an object with keys " +
                    joined(keys));
}

void read_text_lines(const std::string& label, std::string_view text, std::vector<Record>& out) {
  for_each_line(text, [&](std::int64_t line, std::string_view row) {
    if (!row.empty() && row.back() == '\r') row.remove_suffix(1);
    if (row.empty()) return;
    if (!is_valid_utf8(row))
      throw FormatError(label + ": line " + std::to_string(line) + " (record " +
                        std::to_string(out.size()) + "): invalid UTF-8");
    out.push_back(Record{{}, {}, std::string(row), {}});
  });
}

}  // namespace

bool is_valid_utf8(std::string_view text) {
  return !first_invalid_utf8(text);
}

namespace {

RecordSet read_records_text(const std::string& label, std::string_view text, std::string_view ext,
                            RecordKind kind, const ColumnNames& columns) {
  RecordSet set;
  if (ext == ".txt") {
    if (kind != RecordKind::kText)
      throw UsageError(
          label + ": .txt files hold plain text: use the text format, not instruction records");
    read_text_lines(label, text, set.records);
  } else {
    if (ext != ".json" && ext != ".jsonl")
      throw UsageError(label + ": unknown data file type '" + std::string(ext) +
                       "' (expected .json, .jsonl or .txt)");
    RecordReader reader(label, kind, columns, set.records);
    const std::size_t first = text.find_first_not_of(" \t\r\n");
    if (first == std::string_view::npos) throw FormatError(label + ": file is empty");
    if (ext == ".jsonl" || (text[first] == '{' && first_line_is_object(text.substr(first))))
      read_json_lines(text, reader);
    else if (text[first] == '{')
      read_wrapped_records(label, text, reader);
    else
      read_json_array(text, reader);
  }
  set.read = static_cast<std::int64_t>(set.records.size());
  std::erase_if(set.records, [](const Record& r) { return r.output.empty(); });
  set.skipped_empty_output = set.read - static_cast<std::int64_t>(set.records.size());
  return set;
}

}  // namespace

RecordSet read_records(const std::filesystem::path& file, RecordKind kind,
                       const ColumnNames& columns) {
  if (!std::filesystem::exists(file)) throw IoError(file.string() + ": data file not found");
  const MappedFile mapped(file);
  return read_records_text(file.string(), as_text(mapped), file.extension().string(), kind,
                           columns);
}

RecordSet read_records(const InMemoryRecords& records, RecordKind kind,
                       const ColumnNames& columns) {
  if (records.jsonl.find_first_not_of(" \t\r\n") == std::string::npos)
    throw FormatError(records.label + ": no records");
  return read_records_text(records.label, records.jsonl, ".jsonl", kind, columns);
}

}  // namespace zerolora
