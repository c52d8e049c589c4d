#include "lora/lora_layout.hpp"

#include <cmath>

#include "core/error.hpp"
#include "core/rng.hpp"

namespace zerolora {

std::string lora_tensor_name(int layer, LoraModule module, bool is_b) {
  const bool attention = module <= LoraModule::kO;
  return "base_model.model.model.layers." + std::to_string(layer) +
         (attention ? ".self_attn." : ".mlp.") + std::string(lora_module_name(module)) +
         (is_b ? ".lora_B.weight" : ".lora_A.weight");
}

std::array<Index, 2> lora_module_dims(const LlamaConfig& c, LoraModule module) {
  const Index D = c.hidden_size, I = c.intermediate_size;
  switch (module) {
    case LoraModule::kQ:
      return {D, c.q_dim()};
    case LoraModule::kK:
    case LoraModule::kV:
      return {D, c.kv_dim()};
    case LoraModule::kO:
      return {c.q_dim(), D};
    case LoraModule::kGate:
    case LoraModule::kUp:
      return {D, I};
    case LoraModule::kDown:
      return {I, D};
  }
  ZL_CHECK(false);
  return {0, 0};
}

LoraLayout::LoraLayout(const LlamaConfig& model, const LoraConfig& lora) : lora_(lora) {
  lora_.validate();
  const Index r = lora_.rank;
  slots_.resize(static_cast<std::size_t>(model.num_layers));
  present_.assign(static_cast<std::size_t>(model.num_layers), {});
  for (int l = 0; l < model.num_layers; ++l) {
    for (int m = 0; m < kLoraModuleCount; ++m) {
      const auto module = static_cast<LoraModule>(m);
      if (!lora_.targets_module(module)) continue;
      const auto [in, out] = lora_module_dims(model, module);
      LoraAdapterSlots& slot = slots_[l][m];
      slot.in = in;
      slot.out = out;
      slot.a_offset = size_;
      entries_.push_back({lora_tensor_name(l, module, false), l, module, false, r, in, size_});
      size_ += r * in;
      slot.b_offset = size_;
      entries_.push_back({lora_tensor_name(l, module, true), l, module, true, out, r, size_});
      size_ += out * r;
      present_[l][m] = true;
    }
  }
}

const LoraAdapterSlots* LoraLayout::adapter(int layer, LoraModule module) const {
  const int m = static_cast<int>(module);
  return present_[static_cast<std::size_t>(layer)][m] ? &slots_[static_cast<std::size_t>(layer)][m]
                                                      : nullptr;
}

const LoraTensorEntry* LoraLayout::find(const std::string& name) const {
  for (const auto& e : entries_)
    if (e.name == name) return &e;
  return nullptr;
}

template <class T>
void init_lora_params(std::span<T> params, const LoraLayout& layout, std::uint64_t seed) {
  ZL_CHECK(static_cast<Index>(params.size()) == layout.size());
  const LoraConfig& config = layout.config();
  for (std::size_t t = 0; t < layout.entries().size(); ++t) {
    const auto& e = layout.entries()[t];
    T* p = params.data() + e.offset;
    if (e.is_b) {
      for (Index i = 0; i < e.numel(); ++i) p[i] = T{0};
      continue;
    }
    CounterRng rng(hash_combine(seed, t));
    if (config.init == LoraInit::kGaussian) {
      for (Index i = 0; i < e.numel(); ++i) p[i] = static_cast<T>(rng.normal() / config.rank);
    } else {
      // kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+5)), bound gain*sqrt(3/fan_in) = 1/sqrt(in)
      const double bound = 1.0 / std::sqrt(static_cast<double>(e.cols));
      for (Index i = 0; i < e.numel(); ++i) p[i] = static_cast<T>(rng.uniform(-bound, bound));
    }
  }
}

template void init_lora_params<float>(std::span<float>, const LoraLayout&, std::uint64_t);
template void init_lora_params<double>(std::span<double>, const LoraLayout&, std::uint64_t);

}  // namespace zerolora
