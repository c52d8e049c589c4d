// Base (frozen) weights of a Llama model, one flat buffer per unit of the parameter table.
// W is the storage type: bf16 by default, float in fp32 mode, double for gradient checks.
#pragma once

#include <cstdint>
#include <vector>

#include "core/buffer.hpp"
#include "core/runtime.hpp"
#include "io/checkpoint.hpp"
#include "model/parameter_table.hpp"
#include "model/weight_provider.hpp"

namespace zerolora {

template <class W>
struct LlamaWeights : WeightProvider<W> {
  explicit LlamaWeights(const LlamaConfig& config);
  LlamaWeights(LlamaWeights&&) noexcept = default;

  LlamaConfig model_config;
  LayerLayout layer_layout;
  Buffer<W> embedding;   // [V, D]
  Buffer<W> final_norm;  // [D]
  Buffer<W> lm_head;     // [V, D]; empty when tie_word_embeddings
  std::vector<Buffer<W>> layers;

  const W* lm_head_weights() const {
    return model_config.tie_word_embeddings ? embedding.data() : lm_head.data();
  }
  const W* layer_tensor(int layer, LayerTensor t) const {
    return layers[static_cast<std::size_t>(layer)].data() + layer_layout.offset(t);
  }
  // Start of the buffer holding `entry` (plus entry.offset gives the tensor).
  W* unit_data(const ParamEntry& entry);

  // WeightProvider: everything is resident, so acquire is a lookup.
  const LlamaConfig& config() const override { return model_config; }
  const LayerLayout& layout() const override { return layer_layout; }
  const W* acquire(UnitId unit) override;
  bool resident() const override { return true; }
};

// Reads every tensor of the parameter table from the checkpoint, converting F32/F16/BF16 to W
// and checking shapes against config.json. Unknown tensors are an error (they mean the weights
// and config.json disagree), except rotary inv_freq buffers that old exports carry.
template <class W>
LlamaWeights<W> load_llama_weights(Runtime& rt, const Checkpoint& checkpoint);

// Checks that the checkpoint holds every tensor of the parameter table with the shape
// config.json implies and a float dtype, and nothing a Llama of that config lacks; returns
// the table. Reads no tensor data.
std::vector<ParamEntry> validate_checkpoint(const Checkpoint& checkpoint);

// Copies elements [first, first + count) of a tensor from the checkpoint, converting to W.
template <class W>
void read_checkpoint_elements(Runtime& rt, const Checkpoint& checkpoint, const ParamEntry& entry,
                              Index first, Index count, W* dst);

// Element `i` of the table's entry `entry_index` in random_llama_weights: a pure function, so
// a ZeRO-3 rank can generate exactly its shard.
double random_weight(std::uint64_t seed, std::size_t entry_index, const ParamEntry& entry, Index i,
                     double std);

// Random weights N-like(0, std) (uniform with that std), norms 1: for benchmarks and tests.
template <class W>
LlamaWeights<W> random_llama_weights(Runtime& rt, const LlamaConfig& config, std::uint64_t seed,
                                     double std = 0.02);

}  // namespace zerolora
