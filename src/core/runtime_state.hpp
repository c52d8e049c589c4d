// Internals of Runtime, visible to kernel implementations only (they include oneDNN).
#pragma once

#include <cstdint>
#include <list>
#include <memory>
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

  // Exact primitives, and those whose row count is given at execution (key.m = -1; see
  // ops/matmul.cpp). At most max_cached_matmuls, the least recently used dropped first: shapes
  // that vary without bound (the tiled attention's key counts on unpacked data) would otherwise
  // keep ~70 KB each for the whole run. Shared, as a thread may still run one another drops.
  struct CachedMatmulSlot {
    std::shared_ptr<const CachedMatmul> matmul;
    std::list<MatmulKey>::iterator recency;
  };
  std::mutex matmul_mutex;
  std::size_t max_cached_matmuls = 1024;  // oneDNN's own primitive cache holds as many
  std::list<MatmulKey> matmul_recency;    // most recently used first
  std::unordered_map<MatmulKey, CachedMatmulSlot, MatmulKeyHash> matmuls;
};

}  // namespace zerolora::detail
