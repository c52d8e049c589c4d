// AdamW exactly as torch.optim.AdamW (decoupled weight decay, bias correction, eps added to
// the bias-corrected sqrt(v)), over one flat parameter buffer; and global-norm gradient
// clipping as torch.nn.utils.clip_grad_norm_. Parameters and moments share the LoRA layout.
#pragma once

#include <cstdint>
#include <span>

#include "core/buffer.hpp"
#include "core/runtime.hpp"
#include "core/types.hpp"

namespace zerolora {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
};

template <class T>
class AdamW {
 public:
  AdamW(Index size, AdamWConfig config);

  // One update with learning rate lr; the step counter advances first (torch counts from 1).
  void step(Runtime& rt, std::span<T> params, std::span<const T> grads, double lr);

  std::int64_t steps() const { return steps_; }
  const AdamWConfig& config() const { return config_; }
  std::span<T> first_moment() { return m_.span(); }
  std::span<T> second_moment() { return v_.span(); }
  void set_steps(std::int64_t steps) { steps_ = steps; }

 private:
  AdamWConfig config_;
  Buffer<T> m_, v_;
  std::int64_t steps_ = 0;
};

// L2 norm of all gradients (accumulated in double).
template <class T>
double grad_norm(Runtime& rt, std::span<const T> grads);

// torch's clip_grad_norm_ factor: min(1, max_norm / (norm + 1e-6)); 1 when max_norm <= 0
// (clipping off). Gradients are only ever scaled down.
double clip_coefficient(double norm, double max_norm);

// Scales grads by clip_coefficient(their norm, max_norm), like clip_grad_norm_; returns the
// norm before clipping. max_norm <= 0 disables clipping (the norm is still returned).
template <class T>
double clip_grad_norm(Runtime& rt, std::span<T> grads, double max_norm);

}  // namespace zerolora
