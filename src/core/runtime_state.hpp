// Internals of Runtime, visible to kernel implementations only (they include oneDNN).
#pragma once

#include <cstdint>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <unordered_map>
#include <vector>

#include "core/buffer.hpp"

namespace zerolora::detail {

// Identifies one matmul primitive: operand types, shape, strides and post-ops.
struct MatmulKey {
  std::int64_t m, n, k;
  std::int64_t a_rs, a_cs, b_rs, b_cs, c_rs;
  int in_type, out_type;
  float alpha;
  bool accumulate;
  bool operator==(const MatmulKey&) const = default;
};

struct MatmulKeyHash {
  std::size_t operator()(const MatmulKey& key) const noexcept;
};

struct CachedMatmul {
  dnnl::matmul primitive;
  dnnl::memory::desc a, b, c;
  std::size_t scratchpad_bytes;
};

struct RuntimeState {
  explicit RuntimeState(int threads);

  dnnl::engine engine;
  // One stream and one scratchpad per OpenMP thread: attention runs small matmuls from
  // inside parallel regions, and user-managed scratchpads make that safe.
  std::vector<dnnl::stream> streams;
  std::vector<Buffer<std::byte>> scratchpads;

  std::mutex matmul_mutex;
  // Exact primitives, and those whose row count is given at execution (key.m = -1; see
  // ops/matmul.cpp).
  std::unordered_map<MatmulKey, CachedMatmul, MatmulKeyHash> matmuls;
};

}  // namespace zerolora::detail
