// The named parameter table: every base weight of a Llama model by its Hugging Face name,
// with its shape and where it lives. Weights are grouped into units, the ZeRO-3 sharding
// granularity: one flat buffer per decoder layer, plus the embedding, the final norm and the
// lm_head. Inside a layer buffer q, k, v are adjacent rows (one fused [q; k; v] matrix) and so
// are gate and up, so each pair of projections is a single GEMM; the q, k and v biases, where a
// model has them, are adjacent too (one [q; k; v] bias vector).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/types.hpp"
#include "io/llama_config.hpp"

namespace zerolora {

// kQBias..kVBias exist only in models with q/k/v biases (Qwen2): elsewhere they are empty.
enum class LayerTensor : int {
  kAttnNorm,
  kQ,
  kK,
  kV,
  kO,
  kMlpNorm,
  kGate,
  kUp,
  kDown,
  kQBias,
  kKBias,
  kVBias
};
inline constexpr int kLayerTensorCount = 12;

enum class Unit { kEmbedding, kLayer, kFinalNorm, kLmHead };

struct ParamEntry {
  std::string name;  // HF name, e.g. "model.layers.3.self_attn.q_proj.weight"
  Unit unit;
  int layer;     // for Unit::kLayer, else -1
  Index offset;  // elements from the start of the unit's buffer
  std::vector<Index> shape;
  bool trainable;  // base weights are frozen: always false here (LoRA tensors train)
  std::optional<LayerTensor> tensor;  // which tensor of its layer (Unit::kLayer only)
  Index numel() const {
    Index n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

// Offsets of the tensors inside one decoder layer's flat buffer.
class LayerLayout {
 public:
  explicit LayerLayout(const LlamaConfig& config);
  Index offset(LayerTensor t) const { return offsets_[static_cast<int>(t)]; }
  const std::vector<Index>& shape(LayerTensor t) const { return shapes_[static_cast<int>(t)]; }
  Index size() const { return size_; }  // elements, including alignment padding
  bool has(LayerTensor t) const { return !shapes_[static_cast<int>(t)].empty(); }

 private:
  std::array<Index, kLayerTensorCount> offsets_{};
  std::array<std::vector<Index>, kLayerTensorCount> shapes_;
  Index size_ = 0;
};

std::string layer_tensor_name(int layer, LayerTensor t);

// All base weights of the model in load order (tied embeddings: no lm_head entry).
std::vector<ParamEntry> parameter_table(const LlamaConfig& config);

}  // namespace zerolora
