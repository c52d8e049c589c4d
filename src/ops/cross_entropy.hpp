// Token cross-entropy over logits rows, fused with its backward (as torch's
// F.cross_entropy(reduction="sum") followed by scaling):
//   loss_r = logsumexp(z_r) - z_r[target_r]            rows with target == kIgnoreIndex skipped
//   dz_r   = (softmax(z_r) - onehot(target_r)) * grad_scale     written over the logits
// grad_scale is 1 / (label tokens in the whole global batch), so gradients of micro-batches
// and ranks simply add up (HF's num_items_in_batch).
#pragma once

#include <cstdint>

#include "core/runtime.hpp"
#include "ops/conventions.hpp"

namespace zerolora {

// Returns the summed loss of the rows; replaces logits by their gradient when write_grad.
template <class T>
double cross_entropy(Runtime& rt, T* logits /*[R, V]*/, const std::int32_t* targets /*[R]*/,
                     Index R, Index V, double grad_scale, bool write_grad);

}  // namespace zerolora
