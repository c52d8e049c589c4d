// Greedy decoding by full re-forward at each step (no KV cache yet: the `generate` command of
// a later issue adds one). Enough for checks on small models and short continuations.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/llama_model.hpp"

namespace zerolora {

// Returns prompt + generated ids; stops after max_new_tokens or at any of eos_ids.
// on_token (optional) sees the ids after each new token, for streaming output.
template <class P>
std::vector<std::int32_t> greedy_generate(
    LlamaModel<P>& model, std::vector<std::int32_t> ids, int max_new_tokens,
    std::span<const std::int64_t> eos_ids, std::span<const typename P::Act> lora_params = {},
    const std::function<void(const std::vector<std::int32_t>&)>& on_token = {}) {
  const Index V = model.config().vocab_size;
  std::vector<typename P::Act> logits(static_cast<std::size_t>(V));
  for (int step = 0; step < max_new_tokens; ++step) {
    Batch batch;
    batch.add_sequence(ids, std::vector<std::int32_t>(ids.size(), kIgnoreIndex), 0);
    model.forward_logits(batch, lora_params, logits.data(), /*last_only=*/true);
    const auto next =
        static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    ids.push_back(next);
    if (on_token) on_token(ids);
    if (std::find(eos_ids.begin(), eos_ids.end(), next) != eos_ids.end()) break;
  }
  return ids;
}

}  // namespace zerolora
