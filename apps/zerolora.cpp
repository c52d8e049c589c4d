// zerolora: LoRA fine-tuning of Llama models, ZeRO-3 sharded across processes.
// This file only dispatches to subcommands and maps errors to exit codes:
//   0 success, 1 bad input or environment (the message says which file/flag), 2 usage,
//   70 internal error (a bug: please report it).
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "apps/commands.hpp"
#include "core/exit_codes.hpp"

namespace {

int report_failure(const std::exception_ptr& error) {
  const zerolora::ExitReport report = zerolora::exit_report(error);
  std::fprintf(stderr, "zerolora: %s\n", report.message.c_str());
  return report.code;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"zerolora: LoRA fine-tuning of Llama-family models on CPU, ZeRO-3 sharded over MPI"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "zerolora 0.1.0");
  std::map<CLI::App*, zerolora::cli::Command> commands;
  auto add = [&](const std::function<zerolora::cli::Command(CLI::App&)>& factory) {
    const std::size_t before = app.get_subcommands({}).size();
    zerolora::cli::Command command = factory(app);
    auto subs = app.get_subcommands({});
    if (subs.size() > before) commands[subs.back()] = std::move(command);
  };
  zerolora::cli::ArgumentRewriter rewrite_train;
  add(zerolora::cli::add_inspect);
  add(zerolora::cli::add_generate);
  add([&](CLI::App& a) { return zerolora::cli::add_train(a, rewrite_train); });
  add(zerolora::cli::add_merge);
  add(zerolora::cli::add_data_preview);
  add(zerolora::cli::add_forward);
  add(zerolora::cli::add_estimate_memory);
  add(zerolora::cli::add_tokenize);
  std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (!args.empty() && args[0] == "train") {
      auto rewritten = rewrite_train({args.begin() + 1, args.end()});
      rewritten.insert(rewritten.begin(), "train");
      args = std::move(rewritten);
    }
    std::vector<char*> rewritten_argv{argv[0]};
    for (auto& arg : args) rewritten_argv.push_back(arg.data());
    app.parse(static_cast<int>(rewritten_argv.size()), rewritten_argv.data());
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help, version or the parse error
    return code == 0 ? 0 : 2;
  } catch (...) {  // a flag refused while rewriting the arguments
    return report_failure(std::current_exception());
  }
  try {
    for (auto* sub : app.get_subcommands())
      if (auto it = commands.find(sub); it != commands.end()) return it->second();
    return 2;
  } catch (...) {
    return report_failure(std::current_exception());
  }
}
