#include "data/collate.hpp"

#include <algorithm>

#include "core/error.hpp"

namespace zerolora {

Batch make_batch(const std::vector<TokenSequence>& data, std::span<const Index> indices) {
  Batch batch;
  for (Index index : indices) {
    const TokenSequence& seq = data[static_cast<std::size_t>(index)];
    std::size_t at = 0;
    for (std::size_t s = 0; s < seq.segment_lengths.size(); ++s) {
      const auto n = static_cast<std::size_t>(seq.segment_lengths[s]);
      const std::vector<std::int32_t> ids(seq.input_ids.begin() + at,
                                          seq.input_ids.begin() + at + n);
      const std::vector<std::int32_t> labels(seq.labels.begin() + at, seq.labels.begin() + at + n);
      batch.add_sequence(ids, labels,
                         (static_cast<std::int64_t>(index) << 20) + static_cast<std::int64_t>(s));
      at += n;
    }
    ZL_CHECK(at == seq.input_ids.size());
  }
  return batch;
}

PaddedBatch pad_batch(const std::vector<TokenSequence>& data, std::span<const Index> indices,
                      std::int32_t pad_id, Index pad_to_multiple_of) {
  PaddedBatch out;
  out.rows = static_cast<Index>(indices.size());
  for (Index index : indices)
    out.cols = std::max(out.cols, data[static_cast<std::size_t>(index)].size());
  const Index m = std::max<Index>(1, pad_to_multiple_of);
  out.cols = (out.cols + m - 1) / m * m;
  out.input_ids.assign(static_cast<std::size_t>(out.rows * out.cols), pad_id);
  out.labels.assign(out.input_ids.size(), kIgnoreIndex);
  out.attention_mask.assign(out.input_ids.size(), 0);
  for (Index r = 0; r < out.rows; ++r) {
    const TokenSequence& seq = data[static_cast<std::size_t>(indices[r])];
    std::copy(seq.input_ids.begin(), seq.input_ids.end(), out.input_ids.begin() + r * out.cols);
    std::copy(seq.labels.begin(), seq.labels.end(), out.labels.begin() + r * out.cols);
    std::fill_n(out.attention_mask.begin() + r * out.cols, seq.size(), 1);
  }
  return out;
}

}  // namespace zerolora
