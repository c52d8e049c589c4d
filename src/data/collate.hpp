// Token sequences to batches.
//   make_batch: the model's view, with no padding at all: every causal segment of every
//               sequence becomes a segment of one flat token array, labels shifted inside it.
//   pad_batch:  the Hugging Face view (rows padded to the longest, optionally to a multiple
//               of 8; labels -100 and attention_mask 0 on padding), for previews and checks.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "data/examples.hpp"
#include "model/batch.hpp"

namespace zerolora {

// indices: which sequences of `data`, in order. Dropout keys use the dataset index and the
// segment number, so a sample gets the same masks whichever rank or micro-batch it lands in.
Batch make_batch(const std::vector<TokenSequence>& data, std::span<const Index> indices);

struct PaddedBatch {
  Index rows = 0, cols = 0;
  std::vector<std::int32_t> input_ids, labels, attention_mask;  // [rows, cols]
};

PaddedBatch pad_batch(const std::vector<TokenSequence>& data, std::span<const Index> indices,
                      std::int32_t pad_id, Index pad_to_multiple_of = 1);

}  // namespace zerolora
