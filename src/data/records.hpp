// Reading training data files into records.
//   *.json   a JSON array of objects          (Alpaca, e.g. tatsu-lab/alpaca)
//   *.jsonl  one JSON object per line         (JSON Lines)
//   *.txt    one record per non-empty line    (text mode only)
// A .json file that starts with '{' is JSON Lines when its first line is a whole object (as
// `datasets` reads it); otherwise one object holding one array of records ({"data": [...]}),
// columns of equal length ({"instruction": [...], "output": [...]}) or a single record.
// Anything else is refused, saying what was expected.
// Instruction mode takes the instruction/input/output columns (input optional); text mode
// takes one text column, for continued pre-training. Column names are configurable, as
// run_lora_clm's --instruction_column_name etc. Every error names the file, the record index
// (and the line, for JSON Lines) and the field.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace zerolora {

struct ChatMessage {
  std::string role;  // system, user, assistant
  std::string content;
};

struct Record {
  std::string instruction;
  std::string input;
  std::string output;                 // in text mode: the text
  std::vector<ChatMessage> messages;  // in chat mode: the conversation (data/chat.hpp)
  std::int64_t source_index = -1;     // chat mode: the record's index in its file, for errors
};

enum class RecordKind { kInstruction, kText, kChat };

struct ColumnNames {
  std::string instruction = "instruction";
  std::string input = "input";
  std::string output = "output";
  std::string text = "text";
};

struct RecordSet {
  std::vector<Record> records;
  std::int64_t read = 0;                  // records in the file
  std::int64_t skipped_empty_output = 0;  // records dropped because the output/text is empty
};

RecordSet read_records(const std::filesystem::path& file, RecordKind kind,
                       const ColumnNames& columns = {});

// Records held in memory rather than in a file (the Python package's lists and datasets): JSON
// Lines text, read as a .jsonl file would be; `label` names them in errors, where a file's path
// would be.
struct InMemoryRecords {
  std::string label;
  std::string jsonl;
};

RecordSet read_records(const InMemoryRecords& records, RecordKind kind,
                       const ColumnNames& columns = {});

// True when `text` is well-formed UTF-8 (no overlongs, surrogates or code points > U+10FFFF).
bool is_valid_utf8(std::string_view text);

}  // namespace zerolora
