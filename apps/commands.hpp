// Subcommands of the `zerolora` executable. Each registers its flags on the parent CLI11 app
// and returns the function that runs it; `main` turns exceptions into messages and codes.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace zerolora::cli {

using Command = std::function<int()>;

Command add_inspect(CLI::App& app);
Command add_generate(CLI::App& app);
Command add_data_preview(CLI::App& app);
Command add_train(CLI::App& app);
Command add_merge(CLI::App& app);
Command add_forward(CLI::App& app);
Command add_estimate_memory(CLI::App& app);

}  // namespace zerolora::cli
