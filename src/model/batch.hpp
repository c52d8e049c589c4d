// A micro-batch as the model sees it: one flat array of M tokens, cut into causal segments.
// targets[i] is the token position i must predict (kIgnoreIndex for none): the data side
// does the shift that HF does inside the loss, so a segment's last token has no target and
// a packed document never predicts the next document's first token.
#pragma once

#include <cstdint>
#include <vector>

#include "core/types.hpp"
#include "ops/attention.hpp"

namespace zerolora {

struct Batch {
  std::vector<std::int32_t> tokens;      // [M]
  std::vector<std::int32_t> targets;     // [M]
  std::vector<Segment> segments;         // tile [0, M) in order
  std::vector<std::int64_t> sample_ids;  // per segment: index of its sample in the global batch

  Index size() const { return static_cast<Index>(tokens.size()); }
  Index label_count() const;
  Index longest_segment() const;
  // Throws ShapeError on token ids outside [0, vocab), bad targets or segments not tiling [0, M).
  void validate(Index vocab_size) const;

  // Appends one sequence given HF-style input_ids and labels (labels unshifted, as passed to
  // LlamaForCausalLM; kIgnoreIndex where no loss is wanted).
  void add_sequence(const std::vector<std::int32_t>& input_ids,
                    const std::vector<std::int32_t>& labels, std::int64_t sample_id);
};

}  // namespace zerolora
