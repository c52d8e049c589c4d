// The `zerolora` command line as functions: the executable's main and the Python package (its
// `zerolora` entry point, and the functions that return what a command would print) call these.
#pragma once

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace zerolora::cli {

// Runs `zerolora ARGS...` (args without the program name): parses, runs the subcommand, and
// turns errors into a message on stderr and an exit code (0, 1 bad input, 2 usage, 70 bug).
int run_cli(const std::vector<std::string>& args);

// The same, but errors are thrown as the library's typed errors (a flag CLI11 refuses: a
// UsageError with its message); --help prints the help and returns.
void run_command(const std::vector<std::string>& args);

// `zerolora estimate-memory ARGS...` as JSON (what --json prints).
nlohmann::ordered_json estimate_memory_report(const std::vector<std::string>& args);

// What `zerolora inspect PATH` shows, as JSON: {"kind": "model" | "adapter" | "safetensors", ...,
// "tensors": [{"name", "dtype", "shape", "bytes", "file"}]}.
nlohmann::ordered_json inspect_report(const std::filesystem::path& path);

// `zerolora generate ARGS...` returning the text: `on_text` hears the prompt as shown (once, with
// is_prompt true) and then each new piece of the completion as it is generated.
struct GeneratedText {
  std::string prompt;      // the prompt as the model saw it, after BOS (chat: empty)
  std::string completion;  // the generated text, special tokens left out
  std::size_t prompt_tokens = 0, new_tokens = 0;
  double seconds = 0;
};
using TextSink = std::function<void(std::string_view text, bool is_prompt)>;
GeneratedText generate_text(const std::vector<std::string>& args, const TextSink& on_text);

}  // namespace zerolora::cli
