#include "train/memory_estimate.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "core/error.hpp"
#include "core/system_memory.hpp"
#include "model/parameter_table.hpp"
#include "ops/lora_branch.hpp"
#include "zero3/lora_shards.hpp"

namespace zerolora {

void require_memory_fits(const MemoryEstimate& estimate, const MemoryScenario& s, int local_ranks) {
  const auto available = available_memory();
  if (!available) return;
  const double need = estimate.total() * local_ranks;
  if (need <= available->bytes) return;
  auto gib = [](double bytes) {
    char text[32];
    std::snprintf(text, sizeof(text), "%.2f GiB", bytes / 1073741824.0);
    return std::string(text);
  };
  std::vector<MemoryItem> items = estimate.items;
  std::sort(items.begin(), items.end(),
            [](const MemoryItem& a, const MemoryItem& b) { return a.bytes > b.bytes; });
  std::string largest;
  for (std::size_t i = 0; i < std::min<std::size_t>(3, items.size()); ++i)
    largest += (i ? ", " : "") + items[i].name + " " + gib(items[i].bytes);
  throw ResourceError(
      "this run needs about " + gib(estimate.total()) + " per rank (micro-batch " +
      std::to_string(s.micro_batch) + " x " + std::to_string(s.seq_len) + " tokens; largest: " +
      largest + ") x " + std::to_string(local_ranks) + " rank(s) on this machine = " + gib(need) +
      ", more than the " + gib(available->bytes) + " available (" + available->source +
      "). Lower --per_device_train_batch_size (raise --gradient_accumulation_steps to keep "
      "the global batch) or --max_seq_length, keep --gradient_checkpointing on, or spread "
      "the model over more machines; --check_memory false runs it anyway");
}

double MemoryEstimate::total() const {
  double t = 0;
  for (const auto& i : items) t += i.bytes;
  return t;
}

namespace {

struct Preset {
  const char* name;
  std::int64_t vocab, hidden, intermediate, layers, heads, kv_heads;
  const char* model_type;
};
// The released configs' shapes (config.json of each model on the Hub).
constexpr Preset kPresets[] = {
    {"llama2-7b", 32000, 4096, 11008, 32, 32, 32, "llama"},
    {"llama2-13b", 32000, 5120, 13824, 40, 40, 40, "llama"},
    {"llama2-70b", 32000, 8192, 28672, 80, 64, 8, "llama"},
    {"llama3-8b", 128256, 4096, 14336, 32, 32, 8, "llama"},
    {"llama3-70b", 128256, 8192, 28672, 80, 64, 8, "llama"},
    {"qwen2.5-7b", 152064, 3584, 18944, 28, 28, 4, "qwen2"},
    {"qwen2.5-72b", 152064, 8192, 29568, 80, 64, 8, "qwen2"},
    {"mistral-7b", 32768, 4096, 14336, 32, 32, 8, "mistral"},
};

}  // namespace

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const auto& p : kPresets) names.emplace_back(p.name);
  return names;
}

LlamaConfig preset_config(const std::string& name) {
  for (const auto& p : kPresets) {
    if (name != p.name) continue;
    LlamaConfig c;
    c.vocab_size = p.vocab;
    c.hidden_size = p.hidden, c.intermediate_size = p.intermediate, c.num_layers = p.layers;
    c.num_heads = p.heads, c.num_kv_heads = p.kv_heads;
    c.head_dim = c.hidden_size / c.num_heads;
    c.max_position_embeddings = 4096;
    c.rms_norm_eps = 1e-5;
    c.model_type = p.model_type;
    c.qkv_bias = c.model_type == "qwen2";
    return c;
  }
  std::string list;
  for (const auto& n : preset_names()) list += (list.empty() ? "" : ", ") + n;
  throw UsageError("unknown preset '" + name + "' (" + list + ")");
}

MemoryEstimate estimate_memory(const LlamaConfig& c, const LoraLayout& lora,
                               const MemoryScenario& s) {
  MemoryEstimate e;
  const double W = s.world_size, w_bytes = s.bf16 ? 2.0 : 4.0;
  const double D = static_cast<double>(c.hidden_size), I = static_cast<double>(c.intermediate_size);
  const double Qd = static_cast<double>(c.q_dim());
  const double W3 = static_cast<double>(c.q_dim() + 2 * c.kv_dim()),
               V = static_cast<double>(c.vocab_size);
  const double L = static_cast<double>(c.num_layers), r = lora.config().rank;
  const double M = static_cast<double>(s.micro_batch * s.seq_len);
  const double chunk = std::min(M, 1024.0), head_chunk = std::min(M, 512.0), block = 128;
  const double S = static_cast<double>(s.seq_len);

  // Base weights: the units of the parameter table, padded to the world size when sharded.
  const LayerLayout layout(c);
  std::vector<double> units{V * D, D};
  for (int l = 0; l < c.num_layers; ++l) units.push_back(static_cast<double>(layout.size()));
  if (!c.tie_word_embeddings) units.push_back(V * D);
  const bool sharded = s.zero_stage == 3 && s.world_size > 1;
  double base = 0;
  for (double n : units) base += sharded ? std::ceil(n / W) : n;
  e.items.push_back(
      {sharded ? "base weights (this rank's 1/W shard)" : "base weights (whole)", base * w_bytes});
  // In flight: the unit in use and the prefetch_depth units after it, in the order they are
  // used (embedding, layers, final norm, lm_head; the backward the reverse): the largest such
  // window, not the largest unit times the window (the embedding and lm_head, the two largest,
  // are never gathered together).
  std::vector<double> order{V * D};
  for (int l = 0; l < c.num_layers; ++l) order.push_back(static_cast<double>(layout.size()));
  order.push_back(D);
  order.push_back(V * D);
  const std::size_t window = 1 + static_cast<std::size_t>(std::max(0, s.prefetch_depth));
  double in_flight = 0;
  for (std::size_t i = 0; i < order.size(); ++i) {
    double gathered = 0;
    for (std::size_t j = i; j < std::min(order.size(), i + window); ++j) gathered += order[j];
    in_flight = std::max(in_flight, gathered);
  }
  if (sharded)
    e.items.push_back(
        {"gathered units in flight (the one in use + prefetch)", in_flight * w_bytes});

  // LoRA (lora_shards.hpp): replicated tensors whole, partitioned ones as this rank's shard,
  // for parameters, gradients and AdamW moments; one layer gathered at a time; the whole
  // vector only while initialising and saving.
  const LoraPartition plan(
      lora, s.zero_stage > 0 ? s.persistence_threshold : std::numeric_limits<Index>::max(),
      s.world_size);
  Index largest_shard = 0;
  for (const auto& l : plan.layers) largest_shard = std::max(largest_shard, l.shard);
  const double replicated = static_cast<double>(plan.replicated),
               shard = static_cast<double>(plan.shard);
  e.items.push_back(
      {"LoRA parameters + gradients (fp32; partitioned part 1/W)", 8.0 * replicated + 8.0 * shard});
  e.items.push_back(
      {"LoRA one-layer gather buffers", 4.0 * (2.0 * static_cast<double>(plan.largest_layer) +
                                               static_cast<double>(largest_shard) * (2 * W + 1))});
  e.items.push_back({"whole adapter (at start and when saving)", 4.0 * lora.size()});
  e.items.push_back({"AdamW moments (fp32; partitioned part 1/W)", 8.0 * replicated + 8.0 * shard});

  // Activations: every layer's level (model/recompute_plan.hpp), and one layer's working set
  // shared by the layers backward recomputes.
  const RecomputePlan kept_plan =
      make_recompute_plan(s.recompute, c, M, lora.config().rank, 4, s.recompute_budget_bytes);
  const double layer_saved = kept_elements(Recompute::kSelective, c, M, lora.config().rank);
  if (s.bf16_residual)
    e.items.push_back({"layer inputs (bf16 every layer + 2 fp32 working copies)",
                       2.0 * (L + 1) * M * D + 4.0 * 2 * M * D});
  else
    e.items.push_back(
        {"layer inputs (fp32, every layer, kept for backward)", 4.0 * (L + 1) * M * D});
  const bool recomputed =
      std::any_of(kept_plan.levels.begin(), kept_plan.levels.end(), [](Recompute l) {
        return l == Recompute::kFull || l == Recompute::kAttention || l == Recompute::kAttentionMlp;
      });
  if (recomputed)
    e.items.push_back({"one layer's activations (recomputed in backward)", 4.0 * layer_saved});
  if (kept_plan.kept_bytes > 0)
    e.items.push_back({"kept for backward (" + describe_recompute_plan(kept_plan.levels) + ")",
                       kept_plan.kept_bytes});
  // ops/attention.cpp (head dims above 64): qkv and dO packed head by head in the matmul type
  // (each sequence padded to 16 rows), per-thread score tiles, dK/dV sums and a dQ tile.
  const double hd = static_cast<double>(c.head_dim), mm = s.bf16 ? 2.0 : 4.0;
  const double attention = mm * (M + 16.0 * static_cast<double>(s.micro_batch)) * (W3 + Qd) +
                           s.threads * (2 * block * S * 4 + (s.bf16 ? 2 * block * S * 2 : 0.0) +
                                        block * 4 + block * hd * 4 + 2 * S * hd * 4);
  const double mlp = 4.0 * chunk * (2 * I + I + I + 2 * I);
  const double gradients =
      4.0 * (std::max(chunk, M) * D + M * Qd + M * W3 + M * D);  // dh, d_attn, d_qkv, residual
  const double operands = s.bf16 ? 2.0 * std::max({M * D, M * W3, M * Qd, chunk * 2 * I}) : 0.0;
  // ops/lora_branch.hpp: fused ranks keep dz and a row per thread; larger ones a dropped copy.
  const double lora_scratch = r <= kLoraFusedMaxRank
                                  ? 4.0 * (M * r + 2.0 * s.threads * std::max(D, I))
                                  : 4.0 * M * (std::max(D, I) + r);
  e.items.push_back({"backward and attention work buffers",
                     attention + mlp + gradients + operands + lora_scratch});
  e.items.push_back({"fused lm_head + loss (logits chunk, operands)",
                     4.0 * head_chunk * V + 4.0 * 3 * head_chunk * D +
                         (s.bf16 ? 2.0 * head_chunk * std::max(D, V) : 0.0)});
  // ops/matmul.cpp: bf16 backward-data GEMMs of 2^30 multiply-adds or more run on oneDNN's
  // gemm:jit, which packs b in buffers of its own, about 2048 rows of the widest b (bf16) plus
  // 8 MiB (measured: Llama-2-7B's shapes at seq 512, +40-70 MiB of peak RSS with 2 threads).
  const double widest = std::max(D, I);
  if (s.bf16 && M * D * std::max(2 * I, V) >= 1073741824.0)
    e.items.push_back(
        {"oneDNN gemm:jit packing (large backward GEMMs)", 2.0 * 2048 * widest + 8.0 * 1048576.0});
  e.items.push_back({"tokenized training set", 8.0 * static_cast<double>(s.dataset_tokens)});
  // Measured: the process before any model buffer (libraries, oneDNN, MPI, allocator).
  e.items.push_back(
      {"runtime (libraries, oneDNN, MPI)", (s.world_size > 1 ? 64.0 : 44.0) * 1048576.0});
  return e;
}

}  // namespace zerolora
