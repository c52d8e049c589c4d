// Which samples make up each step, for every rank.
// Each epoch has its own deterministic order (a seeded shuffle of the epoch number, or the
// dataset order), optionally grouped by length (HF's group_by_length: shuffled megabatches of
// 50 global batches, each sorted longest first). Global batch `step` is the slice
// [step * G, (step + 1) * G) of that order; rank r of W takes the r-th contiguous 1/W of it,
// so the union over ranks is the global batch, with no overlap, whatever W is. An incomplete
// last global batch wraps around to the start of the order (as torch's DistributedSampler
// pads) unless drop_last. A training set smaller than one global batch is one partial batch
// per epoch, as in Hugging Face's Trainer: the whole set, wrapped only up to a multiple of W
// (never the requested size: memory and time follow the data). A (epoch, step) cursor is all
// it takes to resume.
#pragma once

#include <cstdint>
#include <vector>

#include "core/types.hpp"

namespace zerolora {

struct SamplerOptions {
  Index global_batch = 1;  // samples per optimizer step, all ranks and micro-batches together
  int world = 1;
  int rank = 0;
  std::uint64_t seed = 42;
  bool shuffle = true;
  bool drop_last = false;
  bool group_by_length = false;
};

struct SamplerCursor {
  Index epoch = 0;
  Index step = 0;  // within the epoch
};

class DistributedSampler {
 public:
  // lengths: tokens per sample (used by group_by_length). Throws ConfigError when the global
  // batch is not a multiple of the world size or the dataset is empty.
  DistributedSampler(std::vector<Index> lengths, SamplerOptions options);

  Index size() const { return static_cast<Index>(lengths_.size()); }
  Index steps_per_epoch() const;
  // Samples per step: the requested global batch, or the whole set (up to a multiple of W)
  // when that is smaller.
  Index batch_size() const { return batch_; }
  bool partial_epoch_batch() const { return batch_ < options_.global_batch; }
  Index per_rank() const { return batch_ / options_.world; }
  // The whole global batch of (epoch, step), in order.
  std::vector<Index> global_batch(Index epoch, Index step) const;
  // This rank's share of it.
  std::vector<Index> rank_batch(Index epoch, Index step) const;
  std::vector<Index> epoch_order(Index epoch) const;

 private:
  std::vector<Index> lengths_;
  SamplerOptions options_;
  Index batch_ = 1;
  mutable Index cached_epoch_ = -1;
  mutable std::vector<Index> cached_order_;
};

}  // namespace zerolora
