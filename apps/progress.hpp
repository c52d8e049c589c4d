// The progress of `zerolora train` on rank 0: a bar with the ETA redrawn after every step on a
// terminal, plain log lines every --logging_steps otherwise (a file, a pipe, mpirun's output).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace zerolora::cli {

class Progress {
 public:
  Progress(std::int64_t first_step, std::int64_t total_steps, bool terminal);
  // After each step: redraws the bar (terminal) or, every `every` steps, prints a line. A step
  // that computed nothing (no target token in its batch) says so instead of a loss and a rate.
  void step(std::int64_t step, double loss, double lr, double tokens_per_second, bool computed,
            std::int64_t every);
  void message(const std::string& line);  // a line that should not be overwritten by the bar
  void finish();
  static bool stdout_is_terminal();

 private:
  std::string eta(std::int64_t step) const;
  std::int64_t first_, total_;
  bool terminal_;
  bool bar_drawn_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point second_step_;
};

}  // namespace zerolora::cli
