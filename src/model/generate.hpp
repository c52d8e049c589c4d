// Text generation with a KV cache: the prompt runs once, then one token per pass.
// Decoding as Hugging Face's generate(): greedy when temperature is 0; otherwise logits are
// divided by the temperature, cut to the top_k most likely and to the smallest set whose
// probability reaches top_p, and sampled (counter-based RNG: the same seed, the same text).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <span>
#include <vector>

#include "core/rng.hpp"
#include "model/llama_model.hpp"

namespace zerolora {

struct SamplingOptions {
  double temperature = 0.0;  // 0: greedy
  std::int64_t top_k = 0;    // 0: no cut
  double top_p = 1.0;        // 1: no cut
  std::uint64_t seed = 0;
};

template <class T>
std::int32_t pick_token(std::span<const T> logits, const SamplingOptions& options,
                        std::uint64_t draw) {
  const auto greedy = [&] {
    return static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) -
                                     logits.begin());
  };
  if (options.temperature <= 0) return greedy();
  std::vector<std::int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::int32_t a, std::int32_t b) { return logits[a] > logits[b]; });
  std::size_t keep = order.size();
  if (options.top_k > 0) keep = std::min(keep, static_cast<std::size_t>(options.top_k));
  std::vector<double> p(keep);
  const double top = static_cast<double>(logits[order[0]]) / options.temperature;
  double sum = 0;
  for (std::size_t i = 0; i < keep; ++i)
    sum += p[i] = std::exp(static_cast<double>(logits[order[i]]) / options.temperature - top);
  if (options.top_p < 1.0) {  // smallest prefix reaching top_p (at least one token)
    double cumulative = 0;
    std::size_t cut = 0;
    while (cut < keep && cumulative < options.top_p * sum) cumulative += p[cut++];
    keep = std::max<std::size_t>(1, cut);
    sum = cumulative;
  }
  const double u = static_cast<double>(mix64(draw) >> 11) * (1.0 / 9007199254740992.0) * sum;
  double acc = 0;
  for (std::size_t i = 0; i < keep; ++i)
    if ((acc += p[i]) > u) return order[i];
  return order[keep - 1];
}

// Returns prompt + generated ids; stops after max_new_tokens or at any of eos_ids.
// on_token (optional) sees all ids after each new token, for streaming output.
template <class P>
std::vector<std::int32_t> generate(
    LlamaModel<P>& model, std::vector<std::int32_t> ids, int max_new_tokens,
    std::span<const std::int64_t> eos_ids, std::span<const typename P::Act> lora_params = {},
    const SamplingOptions& sampling = {},
    const std::function<void(const std::vector<std::int32_t>&)>& on_token = {}) {
  using Act = typename P::Act;
  const Index V = model.config().vocab_size;
  auto cache = model.make_cache(static_cast<Index>(ids.size()) + max_new_tokens);
  std::vector<Act> logits(static_cast<std::size_t>(V));
  model.forward_cached(ids, cache, lora_params, logits.data());
  for (int step = 0; step < max_new_tokens; ++step) {
    const std::int32_t next = pick_token<Act>(
        logits, sampling, hash_combine(sampling.seed, static_cast<std::uint64_t>(ids.size())));
    ids.push_back(next);
    if (on_token) on_token(ids);
    if (std::find(eos_ids.begin(), eos_ids.end(), next) != eos_ids.end() ||
        step + 1 == max_new_tokens)
      break;
    const std::int32_t token[1] = {next};
    model.forward_cached(token, cache, lora_params, logits.data());
  }
  return ids;
}

}  // namespace zerolora
