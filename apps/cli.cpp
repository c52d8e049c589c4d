#include "apps/cli.hpp"

#include <algorithm>
#include <cstdio>
#include <map>

#include "apps/commands.hpp"
#include "core/error.hpp"
#include "core/exit_codes.hpp"

namespace zerolora::cli {
namespace {

// Parses `zerolora ARGS...` into a runnable subcommand. Parse errors are CLI::ParseError.
class CommandLine {
 public:
  CommandLine()
      : app_(
            "zerolora: LoRA fine-tuning of Llama-family models on CPUs and NVIDIA GPUs, ZeRO-3 "
            "sharded over MPI or NCCL") {
    app_.require_subcommand(1);
    app_.set_version_flag("--version", "zerolora " ZEROLORA_VERSION);
    add(add_inspect);
    add(add_generate);
    add([this](CLI::App& a) { return add_train(a, rewrite_train_); });
    add(add_merge);
    add(add_data_preview);
    add(add_forward);
    add(add_estimate_memory);
    add(add_tokenize);
    add(add_env);
  }

  // Throws CLI::ParseError, or a typed error for a Hugging Face flag that cannot be honoured.
  void parse(std::vector<std::string> args) {
    if (!args.empty() && args[0] == "train") {
      auto rewritten = rewrite_train_({args.begin() + 1, args.end()});
      rewritten.insert(rewritten.begin(), "train");
      args = std::move(rewritten);
    }
    std::reverse(args.begin(), args.end());  // CLI11's vector form takes them last first
    app_.parse(args);
  }

  int run() {
    for (auto* sub : app_.get_subcommands())
      if (auto it = commands_.find(sub); it != commands_.end()) return it->second();
    return 2;
  }

  CLI::App& app() { return app_; }

 private:
  void add(const std::function<Command(CLI::App&)>& factory) {
    const std::size_t before = app_.get_subcommands({}).size();
    Command command = factory(app_);
    auto subs = app_.get_subcommands({});
    if (subs.size() > before) commands_[subs.back()] = std::move(command);
  }

  CLI::App app_;
  ArgumentRewriter rewrite_train_;
  std::map<CLI::App*, Command> commands_;
};

int report_failure(const std::exception_ptr& error) {
  const ExitReport report = exit_report(error);
  std::fprintf(stderr, "zerolora: %s\n", report.message.c_str());
  return report.code;
}

}  // namespace

int run_cli(const std::vector<std::string>& args) {
  CommandLine line;
  try {
    line.parse(args);
  } catch (const CLI::ParseError& e) {
    const int code = line.app().exit(e);  // prints help, version or the parse error
    return code == 0 ? 0 : 2;
  } catch (...) {  // a flag refused while rewriting the arguments
    return report_failure(std::current_exception());
  }
  try {
    return line.run();
  } catch (...) {
    return report_failure(std::current_exception());
  }
}

void run_command(const std::vector<std::string>& args) {
  CommandLine line;
  try {
    line.parse(args);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) {  // --help, --version
      line.app().exit(e);
      return;
    }
    throw UsageError(e.what());
  }
  const int code = line.run();
  if (code != 0)
    throw Error("zerolora " + (args.empty() ? "" : args[0]) + " exited with code " +
                std::to_string(code));
}

}  // namespace zerolora::cli
