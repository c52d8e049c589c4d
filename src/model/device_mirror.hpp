// Base weights and LoRA tensors for a device the host cannot address (a GPU). A provider may
// hand out host memory (LoRA always; base weights only where a caller passes host weights: the
// runs load them into the GPU's memory, src/zero3/whole_model.hpp); these wrappers give the
// model device copies of what a pass uses, through the Device interface only, so the same code
// serves every backend:
//   DeviceWeights  uploads a unit when it is acquired. When the provider is resident (the whole
//                  model in host memory) each unit is uploaded once and kept; otherwise (ZeRO-3's
//                  gathered units) it is uploaded on every acquire and freed on release.
//   DeviceLora     uploads a layer's LoRA parameters when acquired, gives the layer zeroed device
//                  gradients, and on release adds them into the host gradients, which the
//                  trainer's optimizer, clipping and checkpoints keep using unchanged. LoRA
//                  tensors are small (rank r rows), so these copies cost little next to a layer.
#pragma once

#include <algorithm>
#include <map>
#include <utility>
#include <vector>

#include "core/device.hpp"
#include "lora/lora_layout.hpp"
#include "model/lora_source.hpp"
#include "model/weight_provider.hpp"

namespace zerolora {

template <class W>
class DeviceWeights final : public WeightProvider<W> {
 public:
  DeviceWeights(Device& device, WeightProvider<W>& host) : device_(device), host_(host) {}
  const LlamaConfig& config() const override { return host_.config(); }
  const LayerLayout& layout() const override { return host_.layout(); }
  void begin_schedule(const std::vector<UnitId>& schedule) override {
    host_.begin_schedule(schedule);
  }
  const W* acquire(UnitId unit) override {
    DeviceBuffer<W>& copy = units_[key(unit)];
    if (host_.resident() && !copy.empty()) return copy.data();
    const auto n = static_cast<std::size_t>(unit_elements(config(), layout(), unit));
    const W* source = host_.acquire(unit);
    copy.ensure(device_, n);
    device_.copy_to_device(copy.data(), source, n * sizeof(W));
    if (host_.resident()) host_.release(unit);
    return copy.data();
  }
  void release(UnitId unit) override {
    if (host_.resident()) return;
    units_[key(unit)].release();
    host_.release(unit);
  }
  bool resident() const override { return host_.resident(); }

 private:
  static int key(UnitId unit) { return static_cast<int>(unit.kind) * (1 << 24) + unit.layer + 1; }
  Device& device_;
  WeightProvider<W>& host_;
  std::map<int, DeviceBuffer<W>> units_;
};

// The [first, end) layout offsets of each layer's LoRA tensors (empty for a layer without).
using LoraSpan = std::pair<Index, Index>;
inline std::vector<LoraSpan> lora_layer_spans(const LoraLayout& layout, Index num_layers) {
  std::vector<LoraSpan> spans(static_cast<std::size_t>(num_layers), {layout.size(), 0});
  for (const auto& e : layout.entries()) {
    auto& [first, end] = spans[static_cast<std::size_t>(e.layer)];
    first = std::min(first, e.offset);
    end = std::max(end, e.offset + e.numel());
  }
  for (auto& [first, end] : spans) first = std::min(first, end);
  return spans;
}

template <class T>
class DeviceLora final : public LoraSource<T> {
 public:
  // `spans` (lora_layer_spans) must outlive the mirror.
  DeviceLora(Device& device, LoraSource<T>& host, const std::vector<LoraSpan>& spans)
      : device_(device), host_(host), spans_(spans) {}

  LoraLayerView<T> acquire(int layer, bool with_grads) override {
    const LoraLayerView<T> view = host_.acquire(layer, with_grads);
    const auto [first, end] = spans_[static_cast<std::size_t>(layer)];
    const auto n = static_cast<std::size_t>(end - first);
    host_view_ = view;
    params_.ensure(device_, n);
    device_.copy_to_device(params_.data(), view.params + (first - view.base), n * sizeof(T));
    LoraLayerView<T> mirrored{params_.data(), nullptr, first};
    if (with_grads && view.grads) {
      grads_.ensure(device_, n);
      device_.fill_zero(grads_.data(), n * sizeof(T));
      mirrored.grads = grads_.data();
    }
    return mirrored;
  }

  void release(int layer, bool grads_done) override {
    if (grads_done && host_view_.grads) {
      const auto [first, end] = spans_[static_cast<std::size_t>(layer)];
      const auto n = static_cast<std::size_t>(end - first);
      staged_.resize(n);
      device_.copy_to_host(staged_.data(), grads_.data(), n * sizeof(T));
      T* host = host_view_.grads + (first - host_view_.base);
      for (std::size_t i = 0; i < n; ++i) host[i] += staged_[i];
    }
    host_.release(layer, grads_done);
  }

 private:
  Device& device_;
  LoraSource<T>& host_;
  const std::vector<LoraSpan>& spans_;
  LoraLayerView<T> host_view_;
  DeviceBuffer<T> params_, grads_;
  std::vector<T> staged_;
};

}  // namespace zerolora
