#include "apps/progress.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace zerolora::cli {

Progress::Progress(std::int64_t first_step, std::int64_t total_steps, bool terminal)
    : first_(first_step),
      total_(total_steps),
      terminal_(terminal),
      start_(std::chrono::steady_clock::now()),
      second_step_(start_) {}

bool Progress::stdout_is_terminal() {
  return ::isatty(STDOUT_FILENO) == 1;
}

std::string Progress::eta(std::int64_t step) const {
  // Steps after the first (which pays one-off costs) predict the rest.
  const std::int64_t done = step - first_ - 1;
  if (done <= 0) return "--:--";
  const double per_step =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - second_step_).count() /
      static_cast<double>(done);
  const auto left = static_cast<std::int64_t>(per_step * static_cast<double>(total_ - step));
  char text[32];
  if (left >= 3600)
    std::snprintf(text, sizeof(text), "%lld:%02lld:%02lld", static_cast<long long>(left / 3600),
                  static_cast<long long>(left / 60 % 60), static_cast<long long>(left % 60));
  else
    std::snprintf(text, sizeof(text), "%02lld:%02lld", static_cast<long long>(left / 60),
                  static_cast<long long>(left % 60));
  return text;
}

void Progress::step(std::int64_t step, double loss, double lr, double tokens_per_second,
                    bool computed, std::int64_t every) {
  if (step == first_ + 1) second_step_ = std::chrono::steady_clock::now();
  char text[256];
  if (computed)
    std::snprintf(text, sizeof(text), "step %lld/%lld  loss %.4f  lr %.3g  %.0f tok/s  ETA %s",
                  static_cast<long long>(step), static_cast<long long>(total_), loss, lr,
                  tokens_per_second, eta(step).c_str());
  else
    std::snprintf(text, sizeof(text),
                  "step %lld/%lld  no target token in the batch (prompt tokens only): "
                  "nothing to learn  lr %.3g  ETA %s",
                  static_cast<long long>(step), static_cast<long long>(total_), lr,
                  eta(step).c_str());
  if (terminal_) {
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(kWidth * static_cast<double>(step) /
                                        static_cast<double>(std::max<std::int64_t>(1, total_)));
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.resize(kWidth, '.');
    std::printf("\r[%s] %s\x1b[K", bar.c_str(), text);
    std::fflush(stdout);
    bar_drawn_ = true;
  } else if (every > 0 && (step % every == 0 || step == total_)) {
    std::printf("%s\n", text);
    std::fflush(stdout);
  }
}

void Progress::message(const std::string& line) {
  if (bar_drawn_) std::printf("\r\x1b[K");
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

void Progress::finish() {
  if (bar_drawn_) std::printf("\n");
  bar_drawn_ = false;
  std::fflush(stdout);
}

}  // namespace zerolora::cli
