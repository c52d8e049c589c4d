// Where a decoder layer's LoRA parameters and gradients live while the model runs it. The
// model asks for one layer at a time, like it asks a WeightProvider for base weights:
// WholeLora hands out views into the whole layout in memory (inference, tests, replicated
// training); ZeRO-3 training (train/lora_shards.hpp) gathers a layer's partitioned tensors
// just before use and reduce-scatters its gradients as soon as its backward is done.
#pragma once

#include <span>

#include "core/types.hpp"

namespace zerolora {

// A layer's LoRA tensors: layout offset o (of a tensor of this layer) is params[o - base].
template <class T>
struct LoraLayerView {
  const T* params = nullptr;
  T* grads = nullptr;  // null unless acquired for backward
  Index base = 0;
};

template <class T>
class LoraSource {
 public:
  virtual ~LoraSource() = default;
  // Every rank acquires and releases the same layers in the same order (collectives).
  virtual LoraLayerView<T> acquire(int layer, bool with_grads) = 0;
  // grads_done: the backward of this layer wrote its gradients for this micro-batch (false
  // when a forward pass ends, or when unwinding after an error: nothing is communicated).
  virtual void release(int layer, bool grads_done) {}
};

// The whole layout in memory; gradients (when given) are accumulated in place.
template <class T>
class WholeLora final : public LoraSource<T> {
 public:
  WholeLora(std::span<const T> params, T* grads) : params_(params.data()), grads_(grads) {}
  LoraLayerView<T> acquire(int, bool with_grads) override {
    return {params_, with_grads ? grads_ : nullptr, 0};
  }

 private:
  const T* params_;
  T* grads_;
};

}  // namespace zerolora
