// Shared helpers for benchmarks: timing, peak RSS, key=value output.
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "io/llama_config.hpp"

namespace zerolora::bench {

// A benchmark's main: an error (no GPU, a file that is not there) ends it with one line naming
// the tool and exit code 1, rather than std::terminate's abort.
template <class Body>
int report_errors(const char* tool, Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", tool, e.what());
    return 1;
  }
}

// The demo's model and instruction set in the source tree (the default inputs of job (b)).
inline const std::filesystem::path kDemoDir = ZEROLORA_DEMO_DIR;

inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Peak resident set size of this process so far, in MiB.
inline double peak_rss_mib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

inline void print_kv(const std::string& key, double value) {
  std::printf("%s=%.6g\n", key.c_str(), value);
}
inline void print_kv(const std::string& key, const std::string& value) {
  std::printf("%s=%s\n", key.c_str(), value.c_str());
}

// The benchmarks' job (a): Llama-2-7B's layer shape with `layers` decoder layers.
inline LlamaConfig llama2_7b_shape(Index layers) {
  LlamaConfig c;
  c.hidden_size = 4096;
  c.intermediate_size = 11008;
  c.num_layers = layers;
  c.num_heads = 32;
  c.num_kv_heads = 32;
  c.head_dim = 128;
  c.vocab_size = 32000;
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-5;
  return c;
}

// The benchmarks' shapes with `layers` decoder layers: "7b" (Llama-2-7B), "70b" (Llama-2-70B's
// decoder layer: GQA, 64 heads of 128, 8 KV heads), "llama3-8b" (GQA 32/8, a wider MLP, a 128K
// vocabulary), "tiny" (hidden 256, GQA 4/2 heads of 64, vocabulary 512: the benchmarks' own
// logic on the CUDA emulator, in seconds). Empty for another name.
inline std::optional<LlamaConfig> bench_shape(const std::string& shape, Index layers) {
  LlamaConfig config = llama2_7b_shape(layers);
  if (shape == "70b") {
    config.hidden_size = 8192;
    config.intermediate_size = 28672;
    config.num_heads = 64;
    config.num_kv_heads = 8;
  } else if (shape == "llama3-8b") {
    config.intermediate_size = 14336;
    config.num_kv_heads = 8;
    config.vocab_size = 128256;
    config.rope.theta = 500000;
  } else if (shape == "tiny") {
    config.hidden_size = 256;
    config.intermediate_size = 688;
    config.num_heads = 4;
    config.num_kv_heads = 2;
    config.head_dim = 64;
    config.vocab_size = 512;
  } else if (shape != "7b") {
    return std::nullopt;
  }
  return config;
}

}  // namespace zerolora::bench
