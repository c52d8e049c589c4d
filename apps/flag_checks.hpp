// Range checks for numeric flags, with messages a person would write: "--learning_rate: must
// be a finite number >= 0, got nan". CLI11 parses "nan" and "inf" as numbers and its own range
// validators print the limits of a double in full; these refuse non-finite values first.
#pragma once

#include <CLI/CLI.hpp>
#include <limits>
#include <string>
#include <vector>

namespace zerolora::cli {

// A finite real number in [lo, hi] (either end may be infinite: no limit on that side).
CLI::Validator finite_in(double lo, double hi = std::numeric_limits<double>::infinity());
// A finite real number in [lo, hi).
CLI::Validator finite_below(double lo, double hi);
// A whole number in [lo, hi].
CLI::Validator whole_in(long long lo, long long hi = std::numeric_limits<long long>::max());

// Parses a command's flags given as a function's arguments (the Python package): a flag CLI11
// refuses is a UsageError carrying its message.
void parse_function_flags(CLI::App& cmd, std::vector<std::string> args);

}  // namespace zerolora::cli
