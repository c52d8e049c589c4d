#include "train/metrics.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <sstream>

#include "core/atomic_file.hpp"
#include "core/error.hpp"

namespace zerolora {

MetricsLog::MetricsLog(const std::filesystem::path& path, bool append) : path_(path) {
  file_ = std::fopen(path.c_str(), append ? "a" : "w");
  if (!file_) throw IoError(path.string() + ": cannot write metrics: " + std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  if (file_) std::fclose(file_);
}

void MetricsLog::write(const nlohmann::ordered_json& record) {
  const std::string line =
      record.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
  if (std::fputs(line.c_str(), file_) < 0 || std::fflush(file_) != 0)
    throw IoError(path_.string() + ": write failed: " + std::strerror(errno));
}

namespace {

std::string fmt(double v, int precision = 4) {
  std::ostringstream out;
  out.precision(precision);
  out << v;
  return out.str();
}

}  // namespace

void write_loss_curve_svg(const std::filesystem::path& path, const std::vector<CurvePoint>& train,
                          const std::vector<CurvePoint>& eval, const std::string& title) {
  constexpr double W = 720, H = 420, left = 70, right = 20, top = 40, bottom = 50;
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const auto* series : {&train, &eval})
    for (const auto& p : *series) {
      if (!std::isfinite(p.value)) continue;
      x0 = std::min(x0, p.step), x1 = std::max(x1, p.step);
      y0 = std::min(y0, p.value), y1 = std::max(y1, p.value);
    }
  if (x0 > x1) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  const double pad = 0.05 * (y1 - y0);
  y0 -= pad, y1 += pad;
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * (W - left - right); };
  auto py = [&](double y) { return top + (y1 - y) / (y1 - y0) * (H - top - bottom); };
  std::ostringstream svg;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
         "fill=\"white\"/>\n"
      << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << title
      << "</text>\n";
  for (int i = 0; i <= 5; ++i) {  // grid and tick labels
    const double y = y0 + (y1 - y0) * i / 5, x = x0 + (x1 - x0) * i / 5;
    svg << "<line x1=\"" << left << "\" y1=\"" << py(y) << "\" x2=\"" << W - right << "\" y2=\""
        << py(y) << "\" stroke=\"#e0e0e0\"/>\n<text x=\"" << left - 6 << "\" y=\"" << py(y) + 4
        << "\" text-anchor=\"end\">" << fmt(y) << "</text>\n<text x=\"" << px(x) << "\" y=\""
        << H - bottom + 18 << "\" text-anchor=\"middle\">" << std::llround(x) << "</text>\n";
  }
  svg << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << W - left - right
      << "\" height=\"" << H - top - bottom << "\" fill=\"none\" stroke=\"black\"/>\n"
      << "<text x=\"" << (left + W - right) / 2 << "\" y=\"" << H - 10
      << "\" text-anchor=\"middle\">step</text>\n"
      << "<text x=\"16\" y=\"" << (top + H - bottom) / 2 << "\" transform=\"rotate(-90 16 "
      << (top + H - bottom) / 2 << ")\" text-anchor=\"middle\">loss</text>\n";
  auto polyline = [&](const std::vector<CurvePoint>& series, const char* colour, const char* name,
                      double legend_y) {
    if (series.empty()) return;
    svg << "<polyline fill=\"none\" stroke=\"" << colour << "\" stroke-width=\"1.5\" points=\"";
    for (const auto& p : series)
      if (std::isfinite(p.value)) svg << px(p.step) << "," << py(p.value) << " ";
    svg << "\"/>\n";
    if (series.size() == 1 || std::string(name) == "eval")
      for (const auto& p : series)
        svg << "<circle cx=\"" << px(p.step) << "\" cy=\"" << py(p.value) << "\" r=\"3\" fill=\""
            << colour << "\"/>\n";
    svg << "<line x1=\"" << W - right - 120 << "\" y1=\"" << legend_y << "\" x2=\""
        << W - right - 100 << "\" y2=\"" << legend_y << "\" stroke=\"" << colour
        << "\" stroke-width=\"2\"/><text x=\"" << W - right - 94 << "\" y=\"" << legend_y + 4
        << "\">" << name << " loss</text>\n";
  };
  polyline(train, "#1f77b4", "train", top + 16);
  polyline(eval, "#d62728", "eval", top + 34);
  svg << "</svg>\n";
  write_text_file_atomically(path, svg.str());
}

}  // namespace zerolora
