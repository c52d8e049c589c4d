// ZeRO-3 for the trainable LoRA tensors. Tensors smaller than the persistence threshold
// (DeepSpeed's stage3_param_persistence_threshold) are replicated: every rank keeps them
// whole and their gradients are all-reduced once per step. The others are partitioned layer
// by layer: a layer's partitioned tensors, packed in layout order and padded to a multiple of
// W, are cut into W equal shards, and rank r keeps only shard r of the parameters, gradients
// and AdamW moments. When the model runs a layer, LoraShards all-gathers that layer's
// parameters into a one-layer buffer (prefetching the next layer's while this one computes);
// when the layer's backward is done, it reduce-scatters the layer's gradients into the
// owners' shards, overlapped with the next layer's backward. Nothing of the whole layout is
// resident.
#pragma once

#include <span>
#include <vector>

#include "comm/communicator.hpp"
#include "core/buffer.hpp"
#include "lora/lora_layout.hpp"
#include "model/lora_source.hpp"

namespace zerolora {

// Where every LoRA tensor goes under a threshold and a world size.
struct LoraPartition {
  struct Piece {
    Index offset, count;  // in the layout
    Index packed;         // in the replicated vector, or in the layer's padded vector
  };
  struct Layer {
    Index begin = 0, end = 0;  // the layer's range of the layout
    std::vector<Piece> replicated, partitioned;
    Index partitioned_count = 0;
    Index shard = 0;         // padded partitioned count / W
    Index shard_offset = 0;  // where this layer's shard starts in a rank's shard vector
  };

  LoraPartition(const LoraLayout& layout, Index threshold, int world);

  int world;
  std::vector<Layer> layers;
  Index replicated = 0;     // elements kept whole on every rank
  Index partitioned = 0;    // elements partitioned (before padding)
  Index shard = 0;          // elements of one rank's shard (all layers)
  Index largest_layer = 0;  // the longest layer range

  // whole (layout order) <-> the replicated vector
  void pack_replicated(const float* whole, float* packed) const;
  void unpack_replicated(const float* packed, float* whole) const;
  // whole -> rank r's shard vector
  void shard_of(const float* whole, int rank, float* shard_out) const;
  // every rank's shard vector (shards[r], each `shard` long) -> whole
  void unshard(std::span<const float* const> shards, float* whole) const;
};

class LoraShards final : public LoraSource<float> {
 public:
  LoraShards(Communicator& comm, const LoraLayout& layout, Index threshold);

  const LoraPartition& partition() const { return plan_; }
  std::span<float> replicated_params() { return replicated_params_.span(); }
  std::span<float> replicated_grads() { return replicated_grads_.span(); }
  std::span<float> shard_params() { return shard_params_.span(); }
  std::span<float> shard_grads() { return shard_grads_.span(); }
  void zero_grads();
  // Takes this rank's parts of a whole parameter vector (identical on every rank).
  void set_params(std::span<const float> whole);
  // The whole parameter vector, on every rank (collective: all ranks call it).
  std::vector<float> gather_params() { return gather(replicated_params_, shard_params_); }
  // The whole gradient vector as it stands (after the step's reduction; collective), for
  // tests and diagnostics.
  std::vector<float> gather_grads() { return gather(replicated_grads_, shard_grads_); }
  // Elements this rank keeps between layer passes (parameters, gradients, the buffers).
  Index resident_elements() const;
  // Completes the communication still in flight: the last layer's gradient reduce-scatter
  // (added into the shard) and any unused prefetch. Call before reading the gradients or
  // changing the parameters.
  void flush();

  LoraLayerView<float> acquire(int layer, bool with_grads) override;
  void release(int layer, bool grads_done) override;

 private:
  Communicator& comm_;
  LoraPartition plan_;
  Buffer<float> replicated_params_, replicated_grads_, shard_params_, shard_grads_;
  std::vector<float> gather(const Buffer<float>& replicated, const Buffer<float>& shard);
  void start_gather(int layer);
  void finish_reduce();

  Buffer<float> layer_params_, layer_grads_;  // one layer's range of the layout
  // One all-gather (a layer's padded parameters, prefetched for the next layer) and one
  // reduce-scatter (the last layer's padded gradients into received_) in flight at a time.
  Buffer<float> gathered_, scattered_, received_;
  Request gather_, reduce_;
  int gathering_ = -1, reducing_ = -1;  // their layers
  int held_ = -1;                       // the layer acquired, -1 when none
};

}  // namespace zerolora
