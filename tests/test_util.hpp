// Shared helpers for the tests: fixture paths and tensor comparisons.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "core/bf16.hpp"
#include "io/llama_config.hpp"
#include "lora/lora_layout.hpp"
#include "model/weight_provider.hpp"

namespace zerolora::testing {

// Sets (or, given nullptr, unsets) an environment variable for a scope; restores what was there.
class ScopedEnvironment {
 public:
  ScopedEnvironment(const char* name, const char* value) : name_(name) {
    const char* saved = std::getenv(name);
    had_ = saved != nullptr;
    if (had_) saved_ = saved;
    if (value)
      ::setenv(name, value, 1);
    else
      ::unsetenv(name);
  }
  ~ScopedEnvironment() {
    if (had_)
      ::setenv(name_.c_str(), saved_.c_str(), 1);
    else
      ::unsetenv(name_.c_str());
  }
  ScopedEnvironment(const ScopedEnvironment&) = delete;
  ScopedEnvironment& operator=(const ScopedEnvironment&) = delete;

 private:
  std::string name_, saved_;
  bool had_ = false;
};

// n values drawn from N(0, 1) (the same sequence for a seed), converted to T.
template <class T>
std::vector<T> random_values(std::size_t n, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> dist(0.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) x = convert_to<T>(dist(gen));
  return v;
}

// Every weight unit of a model with config c, each once (no lm_head unit when it is tied to the
// embedding): for tests that walk a weight store unit by unit.
inline std::vector<UnitId> every_unit(const LlamaConfig& c) {
  std::vector<UnitId> units{{Unit::kEmbedding}, {Unit::kFinalNorm}};
  if (!c.tie_word_embeddings) units.push_back({Unit::kLmHead});
  for (int l = 0; l < c.num_layers; ++l) units.push_back({Unit::kLayer, l});
  return units;
}

// Where the repository is at run time: where the tests were built, unless the environment
// variable ZEROLORA_REPO_DIR says otherwise (test binaries carried to another machine, as the
// GPU check does).
inline const char* moved_source_dir() {
  const char* env = std::getenv("ZEROLORA_REPO_DIR");
  return env && *env ? env : nullptr;
}

inline std::filesystem::path fixtures_dir() {
  if (const char* moved = moved_source_dir())
    return std::filesystem::path(moved) / "tests/fixtures";
  return ZEROLORA_FIXTURES_DIR;
}

// The demo's real tiny model (stories260K) and instruction set, kept in the repository.
inline std::filesystem::path demo_dir() {
  if (const char* moved = moved_source_dir()) return std::filesystem::path(moved) / "demo";
  return ZEROLORA_DEMO_DIR;
}
inline std::filesystem::path stories_model_dir() {
  return demo_dir() / "stories260K-hf";
}

// Public data that is not part of the repository (the Alpaca records, the Llama-2 tokenizer)
// lives in the folder ZEROLORA_SHARED_DATA names; empty when the variable is unset.
inline std::filesystem::path shared_data_dir() {
  const char* env = std::getenv("ZEROLORA_SHARED_DATA");
  return env && *env ? std::filesystem::path(env) : std::filesystem::path();
}

// Tests against that public data: skipped, saying why, when ZEROLORA_SHARED_DATA is unset;
// failed when it is set (as CI does) but a file is missing.
class SharedDataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    shared_ = shared_data_dir();
    if (shared_.empty())
      GTEST_SKIP() << "needs the public Alpaca records and the Llama-2 tokenizer, which are not "
                      "part of the repository: set ZEROLORA_SHARED_DATA to a folder holding "
                      "alpaca_en_demo.json and llama2-tokenizer.model";
    for (const char* name : {"alpaca_en_demo.json", "llama2-tokenizer.model"})
      ASSERT_TRUE(std::filesystem::exists(shared_ / name))
          << (shared_ / name) << ": missing, and ZEROLORA_SHARED_DATA names that folder";
  }
  std::filesystem::path alpaca() const { return shared_ / "alpaca_en_demo.json"; }
  std::filesystem::path llama2_tokenizer() const { return shared_ / "llama2-tokenizer.model"; }
  std::filesystem::path shared_;
};

// A whole file's bytes (for byte-identity checks).
inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
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

// mean_i |a_i - b_i| / max_i |b_i|: robust to a few elements that round the other way at a
// bf16 boundary (each costs a whole bf16 step in max_rel_error).
template <class A, class B>
double mean_rel_error(const std::vector<A>& actual, const std::vector<B>& expected) {
  EXPECT_EQ(actual.size(), expected.size());
  const std::size_t n = std::min(actual.size(), expected.size());
  double sum_diff = 0, max_ref = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double a = static_cast<double>(actual[i]), b = static_cast<double>(expected[i]);
    if (!std::isfinite(a)) return INFINITY;
    sum_diff += std::abs(a - b);
    max_ref = std::max(max_ref, std::abs(b));
  }
  const double mean = n > 0 ? sum_diff / static_cast<double>(n) : 0.0;
  return max_ref > 0 ? mean / max_ref : mean;
}

// PEFT-initialised LoRA parameters (seeded) with every B made non-zero: PEFT starts B at 0,
// which would leave every A gradient zero and hide mistakes in it. B element i gets
// b_scale * (i % 7 - 3).
inline std::vector<float> lora_params_with_nonzero_b(const LoraLayout& layout, std::uint64_t seed,
                                                     float b_scale) {
  std::vector<float> params(static_cast<std::size_t>(layout.size()));
  init_lora_params<float>(params, layout, seed);
  for (const auto& e : layout.entries())
    if (e.is_b)
      for (Index i = 0; i < e.numel(); ++i)
        params[static_cast<std::size_t>(e.offset + i)] = b_scale * static_cast<float>(i % 7 - 3);
  return params;
}

}  // namespace zerolora::testing
