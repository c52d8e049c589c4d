#include "apps/flag_checks.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <string>

#include "core/error.hpp"

namespace zerolora::cli {
namespace {

std::string number_text(double v) {
  char text[40];
  std::snprintf(text, sizeof(text), "%.10g", v);
  return text;
}

CLI::Validator real_validator(double lo, double hi, bool open_above) {
  const bool has_lo = std::isfinite(lo), has_hi = std::isfinite(hi);
  std::string want = "a finite number";
  if (has_lo && has_hi && !open_above)
    want += " between " + number_text(lo) + " and " + number_text(hi);
  else if (has_lo && has_hi)
    want += " >= " + number_text(lo) + " and < " + number_text(hi);
  else if (has_lo)
    want += " >= " + number_text(lo);
  else if (has_hi)
    want += (open_above ? " < " : " <= ") + number_text(hi);
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        char* end = nullptr;
        errno = 0;
        const double v = std::strtod(text.c_str(), &end);
        const bool parsed = end != text.c_str() && *end == '\0';
        if (!parsed || !std::isfinite(v) || v < lo || (open_above ? v >= hi : v > hi))
          return "must be " + want + ", got " + text;
        return {};
      },
      want, "");
}

}  // namespace

CLI::Validator finite_in(double lo, double hi) {
  return real_validator(lo, hi, false);
}

CLI::Validator finite_below(double lo, double hi) {
  return real_validator(lo, hi, true);
}

CLI::Validator whole_in(long long lo, long long hi) {
  const bool has_hi = hi != std::numeric_limits<long long>::max();
  const std::string want =
      "a whole number " + (has_hi ? "between " + std::to_string(lo) + " and " + std::to_string(hi)
                                  : ">= " + std::to_string(lo));
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        char* end = nullptr;
        errno = 0;
        const long long v = std::strtoll(text.c_str(), &end, 10);
        const bool parsed = end != text.c_str() && *end == '\0' && errno == 0;
        if (!parsed || v < lo || v > hi) return "must be " + want + ", got " + text;
        return {};
      },
      want, "");
}

void parse_function_flags(CLI::App& cmd, std::vector<std::string> args) {
  std::reverse(args.begin(), args.end());  // CLI11's vector form takes them last first
  try {
    cmd.parse(args);
  } catch (const CLI::ParseError& e) {
    throw UsageError(e.what());
  }
}

}  // namespace zerolora::cli
