#include "data/examples.hpp"

#include <algorithm>
#include <map>
#include <numeric>

#include "core/error.hpp"
#include "core/types.hpp"

namespace zerolora {

TokenSequence tokenize_prompt(const Tokenizer& tokenizer, const Prompt& prompt,
                              const TokenizeOptions& o) {
  const Index L = o.max_seq_length;
  TokenSequence seq;
  const auto full = tokenizer.encode(prompt.source + prompt.target);
  seq.input_ids.reserve(
      static_cast<std::size_t>(std::min<Index>(L, static_cast<Index>(full.size()) + 2)));
  const Index bos = o.add_bos ? 1 : 0;
  if (o.add_bos) seq.input_ids.push_back(o.bos_id);
  const std::size_t keep =
      std::min(full.size(), static_cast<std::size_t>(std::max<Index>(L - bos, 0)));
  seq.input_ids.insert(seq.input_ids.end(), full.begin(),
                       full.begin() + static_cast<std::ptrdiff_t>(keep));
  if (o.add_eos && seq.size() < L && (seq.input_ids.empty() || seq.input_ids.back() != o.eos_id))
    seq.input_ids.push_back(o.eos_id);
  seq.labels = seq.input_ids;
  if (!o.train_on_inputs) {
    const Index source_len =
        prompt.source.empty()
            ? bos
            : std::min<Index>(L, bos + static_cast<Index>(tokenizer.encode(prompt.source).size()));
    const Index masked = std::min(source_len, seq.size());
    std::fill_n(seq.labels.begin(), masked, kIgnoreIndex);
  }
  seq.segment_lengths = {static_cast<std::int32_t>(seq.size())};
  return seq;
}

std::vector<TokenSequence> tokenize_records(Runtime& rt, const std::vector<Record>& records,
                                            const PromptTemplate& prompt,
                                            const Tokenizer& tokenizer,
                                            const TokenizeOptions& options) {
  if (options.max_seq_length < 2) throw ConfigError("max_seq_length must be at least 2");
  std::vector<TokenSequence> out(records.size());
  const Index n = static_cast<Index>(records.size());
  // An exception may not leave an OpenMP loop: the first record that fails is reported after.
  std::vector<std::string> errors(records.size());
#pragma omp parallel for num_threads(rt.threads()) schedule(dynamic, 64)
  for (Index i = 0; i < n; ++i) {
    try {
      out[i] = tokenize_prompt(tokenizer, prompt.apply(records[i]), options);
    } catch (const std::exception& e) {
      errors[i] = e.what();
    }
  }
  for (Index i = 0; i < n; ++i)
    if (!errors[i].empty())
      throw FormatError("record " + std::to_string(i) + ": cannot tokenize: " + errors[i]);
  return out;
}

Packing parse_packing(const std::string& name) {
  if (name == "none") return Packing::kNone;
  if (name == "concat") return Packing::kConcat;
  if (name == "boundaries") return Packing::kBoundaries;
  throw UsageError("unknown packing '" + name + "' (choose none, concat or boundaries)");
}

std::vector<TokenSequence> pack(std::vector<TokenSequence> examples, Packing packing, Index L) {
  if (packing == Packing::kNone) return examples;
  std::vector<TokenSequence> blocks;
  if (packing == Packing::kConcat) {
    TokenSequence current;
    for (const auto& e : examples) {
      std::size_t at = 0;
      while (at < e.input_ids.size()) {
        const std::size_t take = std::min(e.input_ids.size() - at,
                                          static_cast<std::size_t>(L) - current.input_ids.size());
        current.input_ids.insert(current.input_ids.end(), e.input_ids.begin() + at,
                                 e.input_ids.begin() + at + take);
        current.labels.insert(current.labels.end(), e.labels.begin() + at,
                              e.labels.begin() + at + take);
        at += take;
        if (static_cast<Index>(current.input_ids.size()) == L) {
          current.segment_lengths = {static_cast<std::int32_t>(L)};
          blocks.push_back(std::move(current));
          current = TokenSequence{};
        }
      }
    }
    return blocks;  // the partial last block is dropped, as run_lora_clm does
  }
  // Best-fit decreasing: longest examples first, each into the fullest block it still fits.
  std::vector<std::size_t> order(examples.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return examples[a].size() > examples[b].size();
  });
  std::multimap<Index, std::size_t> room;  // free tokens -> block
  for (std::size_t i : order) {
    TokenSequence& e = examples[i];
    auto fit = room.lower_bound(e.size());
    std::size_t b;
    Index free_tokens;
    if (fit == room.end()) {
      b = blocks.size();
      blocks.emplace_back();
      free_tokens = L;
    } else {
      b = fit->second;
      free_tokens = fit->first;
      room.erase(fit);
    }
    TokenSequence& block = blocks[b];
    block.input_ids.insert(block.input_ids.end(), e.input_ids.begin(), e.input_ids.end());
    block.labels.insert(block.labels.end(), e.labels.begin(), e.labels.end());
    block.segment_lengths.push_back(static_cast<std::int32_t>(e.size()));
    free_tokens -= e.size();
    if (free_tokens > 0) room.emplace(free_tokens, b);
  }
  return blocks;
}

}  // namespace zerolora
