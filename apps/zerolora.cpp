// zerolora: LoRA fine-tuning of Llama models, ZeRO-3 sharded across processes.
// This file only dispatches to subcommands and maps errors to exit codes:
//   0 success, 1 bad input or environment (the message says which file/flag), 2 usage,
//   70 internal error (a bug: please report it).
#include <cstdio>
#include <map>
#include <string>

#include "apps/commands.hpp"
#include "core/exit_codes.hpp"

int main(int argc, char** argv) {
  CLI::App app{"zerolora: LoRA fine-tuning of Llama-family models on CPU, ZeRO-3 sharded over MPI"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "zerolora 0.1.0");
  std::map<CLI::App*, zerolora::cli::Command> commands;
  auto add = [&](zerolora::cli::Command (*factory)(CLI::App&)) {
    const std::size_t before = app.get_subcommands({}).size();
    zerolora::cli::Command command = factory(app);
    auto subs = app.get_subcommands({});
    if (subs.size() > before) commands[subs.back()] = std::move(command);
  };
  add(zerolora::cli::add_inspect);
  add(zerolora::cli::add_generate);
  add(zerolora::cli::add_train);
  add(zerolora::cli::add_merge);
  add(zerolora::cli::add_data_preview);
  add(zerolora::cli::add_forward);
  add(zerolora::cli::add_estimate_memory);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help, version or the parse error
    return code == 0 ? 0 : 2;
  }
  try {
    for (auto* sub : app.get_subcommands())
      if (auto it = commands.find(sub); it != commands.end()) return it->second();
    return 2;
  } catch (...) {
    const zerolora::ExitReport report = zerolora::exit_report(std::current_exception());
    std::fprintf(stderr, "zerolora: %s\n", report.message.c_str());
    return report.code;
  }
}
