#include "data/prompt.hpp"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.hpp"
#include "io/json_file.hpp"

namespace zerolora {

const char* const kAlpacaPromptWithInput =
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";
const char* const kAlpacaPromptWithoutInput =
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:";

namespace {

// Substitutes {instruction} and {input}; other braces are left alone.
std::string fill(const std::string& pattern, const Record& r) {
  std::string out;
  out.reserve(pattern.size() + r.instruction.size() + r.input.size());
  std::size_t i = 0;
  while (i < pattern.size()) {
    if (pattern.compare(i, 13, "{instruction}") == 0) {
      out += r.instruction;
      i += 13;
    } else if (pattern.compare(i, 7, "{input}") == 0) {
      out += r.input;
      i += 7;
    } else {
      out += pattern[i++];
    }
  }
  return out;
}

}  // namespace

PromptTemplate PromptTemplate::alpaca() {
  PromptTemplate t;
  t.name_ = "alpaca";
  t.with_input_ = kAlpacaPromptWithInput;
  t.without_input_ = kAlpacaPromptWithoutInput;
  return t;
}

PromptTemplate PromptTemplate::raw() {
  PromptTemplate t;
  t.name_ = "raw";
  t.raw_ = true;
  return t;
}

PromptTemplate PromptTemplate::from_file(const std::filesystem::path& file) {
  const std::string text = read_text_file(file);
  PromptTemplate t;
  t.name_ = file.string();
  const std::size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '{' && file.extension() == ".json") {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(file.string() + ": template is not valid JSON (" + e.what() + ")");
    }
    for (const char* key : {"prompt_input", "prompt_no_input"})
      if (!j.contains(key) || !j[key].is_string())
        throw FormatError(file.string() +
                          ": template JSON needs string fields prompt_input and prompt_no_input");
    t.with_input_ = j["prompt_input"].get<std::string>();
    t.without_input_ = j["prompt_no_input"].get<std::string>();
    return t;
  }
  const std::size_t at = text.find("{output}");
  if (at == std::string::npos)
    throw FormatError(file.string() +
                      ": template has no {output} placeholder (the response goes there)");
  if (text.find("{output}", at + 1) != std::string::npos)
    throw FormatError(file.string() + ": template has {output} more than once");
  t.with_input_ = t.without_input_ = text.substr(0, at);
  t.target_suffix_ = text.substr(at + 8);
  return t;
}

PromptTemplate PromptTemplate::named(const std::string& name_or_path) {
  if (name_or_path == "alpaca") return alpaca();
  if (name_or_path == "raw") return raw();
  if (!std::filesystem::exists(name_or_path))
    throw UsageError("template '" + name_or_path +
                     "' is neither alpaca, raw, nor an existing template file");
  return from_file(name_or_path);
}

Prompt PromptTemplate::apply(const Record& r) const {
  if (raw_) return {r.instruction + r.input, r.output};
  return {fill(r.input.empty() ? without_input_ : with_input_, r), r.output + target_suffix_};
}

}  // namespace zerolora
