// What a run keeps of its progress: a metrics log as JSON Lines one can plot, and the loss
// curve drawn as an SVG next to it.
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

}  // namespace zerolora
