// Records to token sequences, the way the seed recipe (optimum-habana run_lora_clm.py)
// builds them:
//   input_ids = [BOS] + encode(source + target), truncated to max_seq_length, then EOS
//               appended when there is room left
//   labels    = input_ids, with the first len([BOS] + encode(source)) positions set to -100
//               unless train_on_inputs (the prompt is tokenized on its own, as HF does, so a
//               token merged across the prompt/response boundary counts as prompt)
// and then, optionally, packed:
//   concat      run_lora_clm's --dataset_concatenation: all examples end to end, cut into
//               max_seq_length blocks, the remainder dropped; attention runs across
//               examples inside a block, exactly as HF trains it
//   boundaries  whole examples packed (best-fit decreasing) into blocks of at most
//               max_seq_length tokens; each example stays its own segment (positions
//               restart, attention never crosses examples, no example is cut or dropped).
//               zerolora's own: nothing is wasted on padding or on attending to unrelated text
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/runtime.hpp"
#include "core/types.hpp"
#include "data/prompt.hpp"
#include "data/tokenizer.hpp"

namespace zerolora {

struct TokenizeOptions {
  Index max_seq_length = 2048;
  bool train_on_inputs = false;  // false: the prompt is masked from the loss (the default)
  bool add_bos = true;           // false for tokenizers that put no BOS in front (Qwen2)
  bool add_eos = true;
  std::int32_t bos_id = 1;
  std::int32_t eos_id = 2;
};

// One training sequence: a single example, or a packed block of several.
struct TokenSequence {
  std::vector<std::int32_t> input_ids;
  std::vector<std::int32_t> labels;           // unshifted, as HF passes them; -100 = no loss
  std::vector<std::int32_t> segment_lengths;  // causal segments, summing to input_ids.size()
  Index size() const { return static_cast<Index>(input_ids.size()); }
};

TokenSequence tokenize_prompt(const Tokenizer& tokenizer, const Prompt& prompt,
                              const TokenizeOptions& options);

// All records through the template and tokenizer, in parallel; order is kept.
std::vector<TokenSequence> tokenize_records(Runtime& rt, const std::vector<Record>& records,
                                            const PromptTemplate& prompt,
                                            const Tokenizer& tokenizer,
                                            const TokenizeOptions& options);

enum class Packing { kNone, kConcat, kBoundaries };
Packing parse_packing(const std::string& name);  // "none", "concat", "boundaries"

std::vector<TokenSequence> pack(std::vector<TokenSequence> examples, Packing packing,
                                Index max_seq_length);

}  // namespace zerolora
