// Shared helpers for the tests: fixture paths and tensor comparisons.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace zerolora::testing {

inline std::filesystem::path fixtures_dir() {
  return ZEROLORA_FIXTURES_DIR;
}

// ../shared/data (the tiny real model, tokenizers, Alpaca sample); overridable by the
// ZEROLORA_SHARED_DATA environment variable. Empty when it cannot be found.
inline std::filesystem::path shared_data_dir() {
  if (const char* env = std::getenv("ZEROLORA_SHARED_DATA"); env && *env) return env;
  for (const std::filesystem::path& candidate :
       {std::filesystem::path(ZEROLORA_SHARED_DATA_DEFAULT),
        std::filesystem::path("/work/shared/data")})
    if (std::filesystem::exists(candidate / "MANIFEST.md")) return candidate;
  return {};
}

// A fresh directory for one test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ =
        std::filesystem::temp_directory_path() / ("zerolora_" + std::to_string(::getpid()) + "_" +
                                                  info->test_suite_name() + "_" + info->name());
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// max_i |a_i - b_i| / max_i |b_i|: error relative to the tensor's scale, so entries near
// zero (where elementwise relative error is meaningless) do not dominate.
template <class A, class B>
double max_rel_error(std::span<const A> actual, std::span<const B> expected) {
  EXPECT_EQ(actual.size(), expected.size());
  double max_diff = 0, max_ref = 0;
  for (std::size_t i = 0; i < std::min(actual.size(), expected.size()); ++i) {
    const double a = static_cast<double>(actual[i]), b = static_cast<double>(expected[i]);
    if (!std::isfinite(a)) return INFINITY;
    max_diff = std::max(max_diff, std::abs(a - b));
    max_ref = std::max(max_ref, std::abs(b));
  }
  return max_ref > 0 ? max_diff / max_ref : max_diff;
}

template <class A, class B>
double max_rel_error(const std::vector<A>& actual, const std::vector<B>& expected) {
  return max_rel_error(std::span<const A>(actual), std::span<const B>(expected));
}

}  // namespace zerolora::testing
