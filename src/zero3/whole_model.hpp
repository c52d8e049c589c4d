// The whole base model on one rank (no ZeRO-3 sharding), in the memory of the runtime's device:
// the host's (LlamaWeights, read from the checkpoint), or a GPU's, read straight into it through
// a bounded host staging buffer by a one-rank ShardedWeights. A GPU run so never holds a host
// copy of the model besides the device's (13.5 GB for a 7B model, on every rank of a node).
#pragma once

#include <cstdint>
#include <memory>

#include "core/runtime.hpp"
#include "io/checkpoint.hpp"
#include "model/weight_provider.hpp"

namespace zerolora {

template <class W>
std::unique_ptr<WeightProvider<W>> load_whole_model(Runtime& rt, const Checkpoint& checkpoint);

// random_llama_weights(config, seed, std) alike (the same values), for benchmarks: on a GPU
// written into its memory through the same bounded staging, never a host copy of the model.
template <class W>
std::unique_ptr<WeightProvider<W>> random_whole_model(Runtime& rt, const LlamaConfig& config,
                                                      std::uint64_t seed, double std);

}  // namespace zerolora
