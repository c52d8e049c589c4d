// How errors become exit codes and messages, shared by `main` and the multi-rank guard:
//   0 success, 1 bad input or environment, 2 usage, 70 internal error (a bug).
#pragma once

#include <exception>
#include <string>

namespace zerolora {

struct ExitReport {
  int code;
  std::string message;  // one line, without the "zerolora: " prefix
};

// Classifies the exception in flight (call from a catch block) or `error`.
ExitReport exit_report(const std::exception_ptr& error);

}  // namespace zerolora
