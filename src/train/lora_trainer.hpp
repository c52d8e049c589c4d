// One optimizer step of LoRA training on this rank's share of a global batch, ZeRO-style:
//   1. forward + backward over the rank's samples in micro-batches, scaled by
//      1 / (targets in the whole global batch). LoRA tensors smaller than the persistence
//      threshold (DeepSpeed's stage3_param_persistence_threshold) are replicated: their
//      gradients accumulate locally and are all-reduced once per step. The others are
//      partitioned (lora_shards.hpp): each layer's are all-gathered when the layer runs and
//      its gradients reduce-scattered into the owners' shards when its backward is done;
//   2. gradient clipping by the norm over all ranks;
//   3. AdamW (torch semantics) on the replicated tensors, and on this rank's shard only.
// Dropout masks are keyed by (seed, step, sample, position), so the result does not depend on
// the world size or the micro-batch split.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "comm/communicator.hpp"
#include "core/buffer.hpp"
#include "data/examples.hpp"
#include "io/safetensors.hpp"
#include "model/llama_model.hpp"
#include "train/adamw.hpp"
#include "zero3/lora_shards.hpp"

namespace zerolora {

struct TrainerOptions {
  Index micro_batch = 1;  // sequences per forward/backward on one rank
  AdamWConfig adamw;
  double max_grad_norm = 1.0;            // <= 0: no clipping
  std::uint64_t seed = 42;               // dropout masks
  Index persistence_threshold = 100000;  // LoRA tensors with >= this many elements are partitioned
  // Fault injection for the non-finite guard's tests: at this step (0-based; -1: never) rank
  // 0's first micro-batch gets a NaN in the output of decoder layer poison_layer.
  std::int64_t poison_step = -1;
  int poison_layer = 0;
};

struct StepStats {
  double loss = 0;             // mean over the global batch's target tokens
  double grad_norm = 0;        // before clipping
  Index tokens = 0;            // this rank's
  Index targets = 0;           // this rank's target tokens
  double compute_seconds = 0;  // forward + backward on this rank
  // false: the loss or the gradient norm was NaN or Inf (on any rank: every rank agrees) and
  // the step made no update: parameters and optimizer state are as they were before it.
  bool finite = true;
  std::string nonfinite;  // then: what went non-finite and where, the same text on every rank
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
  // a NaN loss. A non-finite loss or gradient norm makes no update either (stats.finite).
  // step_number counts from 0 (messages count from 1, as the logs do).
  StepStats step(const std::vector<TokenSequence>& data, std::span<const Index> rank_samples,
                 Index global_targets, double lr, std::int64_t step_number);

  // Summed loss over the sequences (no gradient), all ranks' shares added. Every rank must
  // pass the same number of samples (pad with sequences whose labels are all -100): under
  // ZeRO-3 each forward pass gathers the model, so all ranks must make the same passes.
  double evaluate(const std::vector<TokenSequence>& data, std::span<const Index> rank_samples,
                  Index micro_batch);

  // The whole LoRA parameter vector, on every rank (collective under ZeRO-3: all ranks call
  // it).
  std::vector<Act> gather_params() { return shards_.gather_params(); }
  // The last step's gradient, whole, after its reduction over the ranks and clipping (what
  // AdamW used); collective.
  std::vector<Act> gather_grads() { return shards_.gather_grads(); }

  // Resume support. The state of this rank is the AdamW moments (of the replicated tensors,
  // and of this rank's shard of the partitioned ones) and the step count; the weights
  // themselves are the adapter's.
  void write_state(SafetensorsWriter& writer) const;
  // Restores weights and this rank's optimizer state from every rank's state file of a
  // checkpoint (files[r] written by rank r), whatever world size and persistence threshold
  // wrote it: the moments are put together in layout order, then split as this run splits
  // them. Throws ShapeError or FormatError when the files do not fit together or this layout.
  void read_state(std::span<const SafetensorsFile> files, std::span<const Act> params);
  std::int64_t steps() const { return replicated_opt_.steps(); }
  const LoraShards& shards() const { return shards_; }

 private:
  // Where a non-finite step came from, in words (collective: every rank calls it). bad_micro
  // (-1: none), site (LlamaModel::nonfinite_site) and first_sample describe this rank's first
  // micro-batch whose loss was not finite.
  std::string describe_nonfinite(std::int64_t step_number, const StepStats& stats,
                                 std::int64_t bad_micro, std::int64_t site,
                                 std::int64_t first_sample);
  static_assert(std::is_same_v<Act, float>, "LoRA state is fp32");
  Runtime& rt_;
  Communicator& comm_;
  LlamaModel<P>& model_;
  const LoraLayout& layout_;
  TrainerOptions options_;
  LoraShards shards_;  // parameters and gradients: replicated, and this rank's shards
  AdamW<Act> replicated_opt_, shard_opt_;
};

}  // namespace zerolora
