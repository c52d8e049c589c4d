#include "model/llama_weights.hpp"

#include <cmath>
#include <set>
#include <string>

#include "core/error.hpp"
#include "core/finite.hpp"
#include "core/rng.hpp"
#include "io/tensor_read.hpp"

namespace zerolora {
namespace {

std::string shape_text(const std::vector<Index>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string config_summary(const LlamaConfig& c) {
  return "hidden_size " + std::to_string(c.hidden_size) + ", intermediate_size " +
         std::to_string(c.intermediate_size) + ", heads " + std::to_string(c.num_heads) + "/" +
         std::to_string(c.num_kv_heads) + " kv, head_dim " + std::to_string(c.head_dim) +
         ", vocab_size " + std::to_string(c.vocab_size);
}

bool is_ignorable_extra(const std::string& name) {
  return name.find("rotary_emb.inv_freq") != std::string::npos ||
         (name == "lm_head.weight");  // present in some tied checkpoints; unused when tied
}

}  // namespace

template <class W>
LlamaWeights<W>::LlamaWeights(const LlamaConfig& c) : model_config(c), layer_layout(c) {
  embedding = Buffer<W>(static_cast<std::size_t>(c.vocab_size * c.hidden_size));
  final_norm = Buffer<W>(static_cast<std::size_t>(c.hidden_size));
  if (!c.tie_word_embeddings)
    lm_head = Buffer<W>(static_cast<std::size_t>(c.vocab_size * c.hidden_size));
  layers.reserve(static_cast<std::size_t>(c.num_layers));
  for (Index l = 0; l < c.num_layers; ++l) {
    layers.emplace_back(static_cast<std::size_t>(layer_layout.size()));
    layers.back().zero();  // alignment padding stays zero
  }
}

template <class W>
W* LlamaWeights<W>::unit_data(const ParamEntry& entry) {
  switch (entry.unit) {
    case Unit::kEmbedding:
      return embedding.data();
    case Unit::kLayer:
      return layers[static_cast<std::size_t>(entry.layer)].data();
    case Unit::kFinalNorm:
      return final_norm.data();
    case Unit::kLmHead:
      return lm_head.data();
  }
  ZL_CHECK(false);
  return nullptr;
}

template <class W>
const W* LlamaWeights<W>::acquire(UnitId unit) {
  switch (unit.kind) {
    case Unit::kEmbedding:
      return embedding.data();
    case Unit::kLayer:
      return layers[static_cast<std::size_t>(unit.layer)].data();
    case Unit::kFinalNorm:
      return final_norm.data();
    case Unit::kLmHead:
      return lm_head_weights();
  }
  ZL_CHECK(false);
  return nullptr;
}

std::vector<ParamEntry> validate_checkpoint(const Checkpoint& checkpoint) {
  const auto table = parameter_table(checkpoint.config());
  std::set<std::string> expected;
  for (const auto& entry : table) {
    expected.insert(entry.name);
    const auto found = checkpoint.find(entry.name);
    if (!found) {
      std::string hint;
      if (entry.unit == Unit::kLmHead) hint = " (config.json says tie_word_embeddings is false)";
      throw ShapeError(checkpoint.dir().string() + ": checkpoint has no tensor '" + entry.name +
                       "'" + hint);
    }
    const TensorInfo& info = *found->info;
    if (info.shape != entry.shape)
      throw ShapeError(found->file->path().string() + ": tensor '" + entry.name + "' has shape " +
                       info.shape_string() + ", but config.json (" +
                       config_summary(checkpoint.config()) + ") needs " + shape_text(entry.shape));
    if (info.dtype != DType::kF32 && info.dtype != DType::kF16 && info.dtype != DType::kBF16)
      throw UnsupportedError(found->file->path().string() + ": tensor '" + entry.name +
                             "' has dtype " + std::string(dtype_name(info.dtype)) +
                             "; weights must be F32, F16 or BF16");
  }
  for (const auto& name : checkpoint.tensor_names())
    if (!expected.count(name) && !is_ignorable_extra(name))
      throw ShapeError(checkpoint.dir().string() + ": checkpoint has tensor '" + name +
                       "' that a Llama with this config.json (" +
                       config_summary(checkpoint.config()) + ", " +
                       std::to_string(checkpoint.config().num_layers) +
                       " layers) does not have: do the weights and config.json belong together?");
  return table;
}

template <class W>
void read_checkpoint_elements(Runtime& rt, const Checkpoint& checkpoint, const ParamEntry& entry,
                              Index first, Index count, W* dst) {
  const auto located = checkpoint.at(entry.name);
  constexpr Index kChunk = 1 << 16;
  const Index chunks = (count + kChunk - 1) / kChunk;
#pragma omp parallel for num_threads(rt.threads()) schedule(static)
  for (Index c = 0; c < chunks; ++c) {
    const Index at = c * kChunk;
    read_float_elements(*located.file, *located.info, first + at, std::min(kChunk, count - at),
                        dst + at);
  }
  // The copy is what stays: let the mapped file pages go, so peak memory is about the copy.
  located.file->drop_pages(*located.info, first, count);
  // A NaN or Inf in the base model would only show as a NaN loss after the first step; say
  // where it is now. (Each rank scans what it read: its own shard under ZeRO-3.)
  if (const Index bad = first_nonfinite(rt, dst, count); bad >= 0) {
    const Index element = first + bad;
    std::string where = "element " + std::to_string(element);
    if (entry.shape.size() == 2)
      where += " (row " + std::to_string(element / entry.shape[1]) + ", column " +
               std::to_string(element % entry.shape[1]) + ")";
    throw FormatError(located.file->path().string() + ": tensor '" + entry.name + "' holds " +
                      nonfinite_name(dst[bad]) + " at " + where +
                      "; the checkpoint is damaged or was saved from a diverged run");
  }
}

template <class W>
LlamaWeights<W> load_llama_weights(Runtime& rt, const Checkpoint& checkpoint) {
  LlamaWeights<W> weights(checkpoint.config());
  for (const auto& entry : validate_checkpoint(checkpoint))
    read_checkpoint_elements(rt, checkpoint, entry, 0, entry.numel(),
                             weights.unit_data(entry) + entry.offset);
  return weights;
}

double random_weight(std::uint64_t seed, std::size_t entry_index, const ParamEntry& entry, Index i,
                     double std) {
  if (entry.shape.size() == 1) return 1.0;    // norm weights
  const double bound = std * std::sqrt(3.0);  // uniform(-b, b) has std b / sqrt(3)
  const std::uint64_t key = hash_combine(seed, entry_index);
  return bound * (2.0 * uniform01(mix64(key ^ static_cast<std::uint64_t>(i))) - 1.0);
}

template <class W>
LlamaWeights<W> random_llama_weights(Runtime& rt, const LlamaConfig& config, std::uint64_t seed,
                                     double std) {
  LlamaWeights<W> weights(config);
  const auto table = parameter_table(config);
  for (std::size_t t = 0; t < table.size(); ++t) {
    const auto& entry = table[t];
    W* dst = weights.unit_data(entry) + entry.offset;
    const Index n = entry.numel();
#pragma omp parallel for num_threads(rt.threads()) schedule(static)
    for (Index i = 0; i < n; ++i) dst[i] = convert_to<W>(random_weight(seed, t, entry, i, std));
  }
  return weights;
}

#define ZL_INSTANTIATE_WEIGHTS(W)                                                                  \
  template struct LlamaWeights<W>;                                                                 \
  template LlamaWeights<W> load_llama_weights<W>(Runtime&, const Checkpoint&);                     \
  template void read_checkpoint_elements<W>(Runtime&, const Checkpoint&, const ParamEntry&, Index, \
                                            Index, W*);                                            \
  template LlamaWeights<W> random_llama_weights<W>(Runtime&, const LlamaConfig&, std::uint64_t,    \
                                                   double);
ZL_INSTANTIATE_WEIGHTS(float)
ZL_INSTANTIATE_WEIGHTS(bf16)
ZL_INSTANTIATE_WEIGHTS(double)
#undef ZL_INSTANTIATE_WEIGHTS

}  // namespace zerolora
