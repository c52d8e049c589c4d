#include "model/parameter_table.hpp"

namespace zerolora {
namespace {

// 32 elements = 64 bytes of bf16: keeps every tensor cache-line aligned for the GEMMs.
constexpr Index kAlignElements = 32;

Index align_up(Index n) {
  return (n + kAlignElements - 1) / kAlignElements * kAlignElements;
}

constexpr std::array<const char*, kLayerTensorCount> kSuffix = {
    "input_layernorm.weight",  "self_attn.q_proj.weight", "self_attn.k_proj.weight",
    "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",    "mlp.up_proj.weight",      "mlp.down_proj.weight",
    "self_attn.q_proj.bias",   "self_attn.k_proj.bias",   "self_attn.v_proj.bias"};

}  // namespace

LayerLayout::LayerLayout(const LlamaConfig& c) {
  const Index D = c.hidden_size, I = c.intermediate_size;
  using Shape = std::vector<Index>;
  const auto bias = [&](Index n) { return c.qkv_bias ? Shape{n} : Shape{}; };
  shapes_ = {{{D},
              {c.q_dim(), D},
              {c.kv_dim(), D},
              {c.kv_dim(), D},
              {D, c.q_dim()},
              {D},
              {I, D},
              {I, D},
              {D, I},
              bias(c.q_dim()),
              bias(c.kv_dim()),
              bias(c.kv_dim())}};
  Index cursor = 0;
  for (int t = 0; t < kLayerTensorCount; ++t) {
    const auto tensor = static_cast<LayerTensor>(t);
    if (!has(tensor)) continue;
    // k follows q and v follows k without padding (one fused QKV matrix, and one QKV bias);
    // up follows gate.
    const bool fused_with_previous = tensor == LayerTensor::kK || tensor == LayerTensor::kV ||
                                     tensor == LayerTensor::kUp || tensor == LayerTensor::kKBias ||
                                     tensor == LayerTensor::kVBias;
    if (!fused_with_previous) cursor = align_up(cursor);
    offsets_[t] = cursor;
    Index n = 1;
    for (auto d : shapes_[t]) n *= d;
    cursor += n;
  }
  size_ = align_up(cursor);
}

std::string layer_tensor_name(int layer, LayerTensor t) {
  return "model.layers." + std::to_string(layer) + "." + kSuffix[static_cast<int>(t)];
}

std::vector<ParamEntry> parameter_table(const LlamaConfig& c) {
  std::vector<ParamEntry> table;
  table.push_back({"model.embed_tokens.weight",
                   Unit::kEmbedding,
                   -1,
                   0,
                   {c.vocab_size, c.hidden_size},
                   false,
                   {}});
  const LayerLayout layout(c);
  for (int l = 0; l < c.num_layers; ++l)
    for (int t = 0; t < kLayerTensorCount; ++t) {
      const auto tensor = static_cast<LayerTensor>(t);
      if (!layout.has(tensor)) continue;
      table.push_back({layer_tensor_name(l, tensor), Unit::kLayer, l, layout.offset(tensor),
                       layout.shape(tensor), false, tensor});
    }
  table.push_back({"model.norm.weight", Unit::kFinalNorm, -1, 0, {c.hidden_size}, false, {}});
  if (!c.tie_word_embeddings)
    table.push_back(
        {"lm_head.weight", Unit::kLmHead, -1, 0, {c.vocab_size, c.hidden_size}, false, {}});
  return table;
}

}  // namespace zerolora
