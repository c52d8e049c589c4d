// zerolora: LoRA fine-tuning of Llama models, ZeRO-3 sharded across processes.
// Exit codes: 0 success, 1 bad input or environment (the message says which file/flag),
// 2 usage, 70 internal error (a bug: please report it). The command line itself is
// apps/cli.cpp, shared with the Python package's `zerolora` entry point.
#include "apps/cli.hpp"

int main(int argc, char** argv) {
  return zerolora::cli::run_cli({argv + 1, argv + argc});
}
