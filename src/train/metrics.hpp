// What a run reports: a progress bar on rank 0 (plain log lines when stdout is not a
// terminal), a metrics log as JSON Lines one can plot, and the loss curve drawn as an SVG
// next to it.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace zerolora {

class MetricsLog {
 public:
  // append: continue the log of a resumed run.
  MetricsLog(const std::filesystem::path& path, bool append);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  void write(const nlohmann::ordered_json& record);  // one line, flushed
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
};

struct CurvePoint {
  double step;
  double value;
};

// A self-contained SVG plot of training (and evaluation) loss against the step.
void write_loss_curve_svg(const std::filesystem::path& path, const std::vector<CurvePoint>& train,
                          const std::vector<CurvePoint>& eval, const std::string& title);

class Progress {
 public:
  Progress(std::int64_t first_step, std::int64_t total_steps, bool terminal);
  // After each step: redraws the bar (terminal) or, every `every` steps, prints a line.
  void step(std::int64_t step, double loss, double lr, double tokens_per_second,
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

}  // namespace zerolora
