// Subcommands of the `zerolora` executable. Each registers its flags on the parent CLI11 app
// and returns the function that runs it; `main` turns exceptions into messages and codes.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace zerolora::cli {

using Command = std::function<int()>;
// Rewrites a subcommand's arguments before CLI11 parses them.
using ArgumentRewriter =
    std::function<std::vector<std::string>(const std::vector<std::string>& args)>;

Command add_inspect(CLI::App& app);
Command add_generate(CLI::App& app);
Command add_data_preview(CLI::App& app);
// `zerolora train` reads Hugging Face command lines: `rewrite` is set to the function main
// passes its arguments through first (apps/hf_args.hpp).
Command add_train(CLI::App& app, ArgumentRewriter& rewrite);
Command add_merge(CLI::App& app);
Command add_forward(CLI::App& app);
Command add_estimate_memory(CLI::App& app);
Command add_tokenize(CLI::App& app);
Command add_env(CLI::App& app);

// A byte count in the largest binary unit that keeps it at least 1: "512 B", "1.5 GiB"
// (cmd_inspect.cpp; `inspect` and `env` print sizes with it).
std::string human_bytes(double bytes);

}  // namespace zerolora::cli
