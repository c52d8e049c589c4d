// Token cross-entropy over logits rows, fused with its backward (as torch's
// F.cross_entropy(reduction="sum") followed by scaling):
//   loss_r = logsumexp(z_r) - z_r[target_r]            rows with target == kIgnoreIndex skipped
//   dz_r   = (softmax(z_r) - onehot(target_r)) * grad_scale     written over the logits
// grad_scale is 1 / (label tokens in the whole global batch), so gradients of micro-batches
// and ranks simply add up (HF's num_items_in_batch).
#pragma once

#include <cmath>
#include <cstdint>

#include "core/cpu_dispatch.hpp"
#include "core/fast_math.hpp"
#include "core/runtime.hpp"
#include "ops/conventions.hpp"

namespace zerolora {

// Returns the summed loss of the rows; replaces logits by their gradient when write_grad.
template <class T>
ZL_CPU_CLONES double cross_entropy(Runtime& rt, T* logits /*[R, V]*/,
                                   const std::int32_t* targets /*[R]*/, Index R, Index V,
                                   double grad_scale, bool write_grad) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kLoss);
  double total = 0;
#pragma omp parallel for num_threads(rt.threads()) schedule(static) reduction(+ : total)
  for (Index r = 0; r < R; ++r) {
    T* z = logits + r * V;
    const std::int32_t target = targets[r];
    if (target == kIgnoreIndex) {
      if (write_grad)
        for (Index j = 0; j < V; ++j) z[j] = T{0};
      continue;
    }
    T row_max = z[0];
    for (Index j = 1; j < V; ++j) row_max = z[j] > row_max ? z[j] : row_max;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (Index j = 0; j < V; ++j) sum += fast_exp(z[j] - row_max);
    const T lse = row_max + std::log(sum);
    total += static_cast<double>(lse - z[target]);
    if (write_grad) {
      const T scale = static_cast<T>(grad_scale);
#pragma omp simd
      for (Index j = 0; j < V; ++j) z[j] = fast_exp(z[j] - lse) * scale;
      z[target] -= scale;
    }
  }
  return total;
}

}  // namespace zerolora
