// One optimizer step of LoRA training on this rank's share of a global batch, ZeRO-style:
//   1. forward + backward over the rank's samples in micro-batches, LoRA gradients
//      accumulating locally, scaled by 1 / (targets in the whole global batch);
//   2. LoRA tensors smaller than the persistence threshold (DeepSpeed's
//      stage3_param_persistence_threshold) are replicated: their gradients are all-reduced
//      and every rank applies the same AdamW update; the others are partitioned: gradients
//      reduce-scattered, AdamW moments and master weights kept for the rank's 1/W slice
//      only, the updated slices all-gathered back;
//   3. gradient clipping by the norm over all ranks, then AdamW (torch semantics).
// Dropout masks are keyed by (seed, step, sample, position), so the result does not depend on
// the world size or the micro-batch split.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/buffer.hpp"
#include "data/examples.hpp"
#include "dist/communicator.hpp"
#include "io/safetensors.hpp"
#include "model/llama_model.hpp"
#include "train/adamw.hpp"

namespace zerolora {

struct TrainerOptions {
  Index micro_batch = 1;  // sequences per forward/backward on one rank
  AdamWConfig adamw;
  double max_grad_norm = 1.0;            // <= 0: no clipping
  std::uint64_t seed = 42;               // dropout masks
  Index persistence_threshold = 100000;  // LoRA tensors with >= this many elements are partitioned
};

struct StepStats {
  double loss = 0;             // mean over the global batch's target tokens
  double grad_norm = 0;        // before clipping
  Index tokens = 0;            // this rank's
  Index targets = 0;           // this rank's target tokens
  double compute_seconds = 0;  // forward + backward on this rank
};

// Target tokens (positions with a label to predict) of the given sequences.
Index count_targets(const std::vector<TokenSequence>& data, std::span<const Index> indices);

template <class P>
class LoraTrainer {
 public:
  using Act = typename P::Act;

  // initial_params: the full LoRA parameter vector (identical on every rank).
  LoraTrainer(Runtime& rt, Communicator& comm, LlamaModel<P>& model, const LoraLayout& layout,
              TrainerOptions options, std::span<const Act> initial_params);

  // A global batch without any target token (all labels masked) makes no update and reports
  // a NaN loss.
  StepStats step(const std::vector<TokenSequence>& data, std::span<const Index> rank_samples,
                 Index global_targets, double lr, std::int64_t step_number);

  // Summed loss over the sequences (no gradient), all ranks' shares added. Every rank must
  // pass the same number of samples (pad with sequences whose labels are all -100): under
  // ZeRO-3 each forward pass gathers the model, so all ranks must make the same passes.
  double evaluate(const std::vector<TokenSequence>& data, std::span<const Index> rank_samples,
                  Index micro_batch);

  std::span<const Act> params() const { return params_.span(); }

  // Resume support. The state of this rank is the AdamW moments (of the replicated tensors,
  // and of this rank's slice of the partitioned ones) and the step count; the weights
  // themselves are the adapter's.
  void write_state(SafetensorsWriter& writer) const;
  // Restores weights and this rank's optimizer state from every rank's state file of a
  // checkpoint (files[r] written by rank r), whatever world size and persistence threshold
  // wrote it: the moments are put together in layout order, then split as this run splits
  // them. Throws ShapeError or FormatError when the files do not fit together or this layout.
  void read_state(std::span<const SafetensorsFile> files, std::span<const Act> params);
  std::int64_t steps() const { return replicated_opt_.steps(); }
  Index partitioned_elements() const { return partitioned_; }
  Index replicated_elements() const { return replicated_; }

 private:
  struct Slice {
    Index offset, count;  // in the LoRA layout
  };
  // The replicated and partitioned slices of the layout under a persistence threshold.
  void split_layout(Index threshold, std::vector<Slice>& replicated,
                    std::vector<Slice>& partitioned) const;
  void pack(std::span<const Slice> slices, const Act* full, Act* packed) const;
  void unpack(std::span<const Slice> slices, const Act* packed, Act* full) const;

  Runtime& rt_;
  Communicator& comm_;
  LlamaModel<P>& model_;
  const LoraLayout& layout_;
  TrainerOptions options_;
  std::vector<Slice> replicated_slices_, partitioned_slices_;
  Index replicated_ = 0, partitioned_ = 0, partitioned_padded_ = 0;
  Buffer<Act> params_, grads_;  // full LoRA layout, what the model reads/writes
  Buffer<Act> replicated_params_, replicated_grads_;
  Buffer<Act> partitioned_grads_full_, shard_params_, shard_grads_, partitioned_params_full_;
  AdamW<Act> replicated_opt_, shard_opt_;
};

}  // namespace zerolora
