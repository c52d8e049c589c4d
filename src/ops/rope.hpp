// Rotary position embedding in the HF rotate_half (half-split) layout:
//   y[j]        = x[j] cos(p w_j) - x[j + h] sin(p w_j)
//   y[j + h]    = x[j + h] cos(p w_j) + x[j] sin(p w_j)        j < h = head_dim / 2
// Frequencies follow transformers' default, "linear" and "llama3" rope types, computed in
// fp32 the way torch does so that angles match the reference bit for bit where possible.
#pragma once

#include <cstdint>
#include <vector>

#include "core/runtime.hpp"
#include "ops/conventions.hpp"

namespace zerolora {

struct RopeParams {
  enum class Type { kDefault, kLinear, kLlama3 };
  Type type = Type::kDefault;
  double theta = 10000.0;
  double factor = 1.0;                                   // linear, llama3
  double low_freq_factor = 1.0;                          // llama3
  double high_freq_factor = 4.0;                         // llama3
  std::int64_t original_max_position_embeddings = 8192;  // llama3
};

// Inverse frequencies w_j, j < head_dim / 2 (fp32, as transformers computes them).
std::vector<float> rope_inverse_frequencies(const RopeParams& params, Index head_dim);

// cos/sin of p * w_j for positions p < positions(), grown on demand (at least doubling).
class RopeTable {
 public:
  RopeTable(const RopeParams& params, Index head_dim);
  void ensure(Index positions);
  Index half() const { return half_; }
  const float* cos(Index position) const { return cos_.data() + position * half_; }
  const float* sin(Index position) const { return sin_.data() + position * half_; }
  Index positions() const { return size_; }

 private:
  Index half_;
  Index size_ = 0;
  std::vector<float> inv_freq_, cos_, sin_;
};

// In place on `heads` consecutive heads of each row: x[i * row_stride + h * head_dim + j],
// rotated by +angle (forward) or -angle (the transpose of the rotation, which backward applies
// to turn d(rotated) into d(unrotated)).
template <class T>
void rope_rotate(Runtime& rt, T* x /*[M, row_stride]*/, const std::int32_t* positions /*[M]*/,
                 const RopeTable& table, Index M, Index row_stride, Index heads, bool inverse);

template <class T>
void rope_forward(Runtime& rt, T* x, const std::int32_t* positions, const RopeTable& table, Index M,
                  Index row_stride, Index heads) {
  rope_rotate(rt, x, positions, table, M, row_stride, heads, false);
}

template <class T>
void rope_backward(Runtime& rt, T* dx, const std::int32_t* positions, const RopeTable& table,
                   Index M, Index row_stride, Index heads) {
  rope_rotate(rt, dx, positions, table, M, row_stride, heads, true);
}

}  // namespace zerolora
