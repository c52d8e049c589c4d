#include "model/batch.hpp"

#include <algorithm>
#include <string>

#include "core/error.hpp"

namespace zerolora {

Index Batch::label_count() const {
  return static_cast<Index>(std::count_if(targets.begin(), targets.end(),
                                          [](std::int32_t t) { return t != kIgnoreIndex; }));
}

Index Batch::longest_segment() const {
  Index longest = 0;
  for (const auto& s : segments) longest = std::max(longest, s.length);
  return longest;
}

void Batch::validate(Index vocab_size) const {
  if (targets.size() != tokens.size())
    throw ShapeError("batch: " + std::to_string(targets.size()) + " targets for " +
                     std::to_string(tokens.size()) + " tokens");
  if (sample_ids.size() != segments.size())
    throw ShapeError("batch: sample_ids and segments differ in count");
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab_size)
      throw ShapeError("batch: token " + std::to_string(i) + " has id " +
                       std::to_string(tokens[i]) + ", outside the vocabulary [0, " +
                       std::to_string(vocab_size) + ")");
    if (targets[i] != kIgnoreIndex && (targets[i] < 0 || targets[i] >= vocab_size))
      throw ShapeError("batch: target " + std::to_string(i) + " is " + std::to_string(targets[i]) +
                       ", neither -100 nor inside the vocabulary [0, " +
                       std::to_string(vocab_size) + ")");
  }
  Index expected = 0;
  for (const auto& s : segments) {
    if (s.begin != expected || s.length < 1)
      throw ShapeError("batch: segments must tile the tokens in order without gaps");
    expected += s.length;
  }
  if (expected != size())
    throw ShapeError("batch: segments cover " + std::to_string(expected) + " of " +
                     std::to_string(size()) + " tokens");
}

void Batch::add_sequence(const std::vector<std::int32_t>& input_ids,
                         const std::vector<std::int32_t>& labels, std::int64_t sample_id) {
  if (input_ids.size() != labels.size())
    throw ShapeError("batch: a sequence has " + std::to_string(input_ids.size()) +
                     " input ids but " + std::to_string(labels.size()) + " labels");
  if (input_ids.empty()) throw ShapeError("batch: empty sequence");
  segments.push_back({size(), static_cast<Index>(input_ids.size())});
  sample_ids.push_back(sample_id);
  tokens.insert(tokens.end(), input_ids.begin(), input_ids.end());
  for (std::size_t t = 0; t + 1 < labels.size(); ++t) targets.push_back(labels[t + 1]);
  targets.push_back(kIgnoreIndex);
}

}  // namespace zerolora
