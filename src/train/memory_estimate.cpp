#include "train/memory_estimate.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include "core/error.hpp"
#include "core/system_memory.hpp"
#include "model/parameter_table.hpp"
#include "ops/attention.hpp"
#include "ops/cudnn_plan.hpp"
#include "ops/lora_branch.hpp"
#include "zero3/lora_shards.hpp"

namespace zerolora {

namespace {

std::string gib(double bytes) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.2f GiB", bytes / 1073741824.0);
  return std::string(text);
}

// "micro-batch 10 x 2048 tokens; largest: gathered units 3.2 GiB, ...": the three largest items
// of the memory checked (the host's items, or the model's).
std::string what_counts(const MemoryEstimate& estimate, const MemoryScenario& s, bool host) {
  std::vector<MemoryItem> items;
  for (const auto& i : estimate.items)
    if (i.host == host) items.push_back(i);
  std::sort(items.begin(), items.end(),
            [](const MemoryItem& a, const MemoryItem& b) { return a.bytes > b.bytes; });
  std::string largest;
  for (std::size_t i = 0; i < std::min<std::size_t>(3, items.size()); ++i)
    largest += (i ? ", " : "") + items[i].name + " " + gib(items[i].bytes);
  return "micro-batch " + std::to_string(s.micro_batch) + " x " + std::to_string(s.seq_len) +
         " tokens; largest: " + largest;
}

constexpr const char* kLowerTheRun =
    "Lower --per_device_train_batch_size (raise --gradient_accumulation_steps to keep the global "
    "batch) or --max_seq_length, keep --gradient_checkpointing on, or spread the model over more ";

}  // namespace

void require_memory_fits(const MemoryEstimate& estimate, const MemoryScenario& s, int local_ranks) {
  const auto available = available_memory();
  if (!available) return;
  const double per_rank = s.gpu ? estimate.host_total() : estimate.total();
  const double need = per_rank * local_ranks;
  if (need <= available->bytes) return;
  throw ResourceError("this run needs about " + gib(per_rank) + (s.gpu ? " of host memory" : "") +
                      " per rank (" + what_counts(estimate, s, s.gpu) + ") x " +
                      std::to_string(local_ranks) + " rank(s) on this machine = " + gib(need) +
                      ", more than the " + gib(available->bytes) + " available (" +
                      available->source + "). " + kLowerTheRun +
                      "machines; --check_memory false runs it anyway");
}

void require_device_memory_fits(const MemoryEstimate& estimate, const MemoryScenario& s,
                                const std::string& device_name, double free_bytes,
                                int ranks_on_device) {
  const double per_rank = estimate.total();
  const double need = per_rank * ranks_on_device;
  if (need <= free_bytes) return;
  throw ResourceError("this run needs about " + gib(per_rank) + " of GPU memory per rank (" +
                      what_counts(estimate, s, false) + ")" +
                      (ranks_on_device > 1 ? " x " + std::to_string(ranks_on_device) +
                                                 " ranks on this GPU = " + gib(need)
                                           : std::string()) +
                      ", more than the " + gib(free_bytes) + " free on " + device_name + ". " +
                      (ranks_on_device > 1 ? "Run fewer ranks on each GPU, or: " : "") +
                      kLowerTheRun + "GPUs with ZeRO-3; --check_memory false runs it anyway");
}

double MemoryEstimate::total() const {
  double t = 0;
  for (const auto& i : items)
    if (!i.host) t += i.bytes;
  return t;
}

double MemoryEstimate::host_total() const {
  double t = 0;
  for (const auto& i : items)
    if (i.host) t += i.bytes;
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

namespace {

// Shapes shared by the items.
struct Dims {
  double W, w_bytes, D, I, Qd, W3, V, L, r, B, M, S, heads, hd;
};

Dims dims_of(const LlamaConfig& c, const LoraLayout& lora, const MemoryScenario& s) {
  return {static_cast<double>(s.world_size),
          s.bf16 ? 2.0 : 4.0,
          static_cast<double>(c.hidden_size),
          static_cast<double>(c.intermediate_size),
          static_cast<double>(c.q_dim()),
          static_cast<double>(c.q_dim() + 2 * c.kv_dim()),
          static_cast<double>(c.vocab_size),
          static_cast<double>(c.num_layers),
          static_cast<double>(lora.config().rank),
          static_cast<double>(s.micro_batch),
          static_cast<double>(s.micro_batch * s.seq_len),
          static_cast<double>(s.seq_len),
          static_cast<double>(c.num_heads),
          static_cast<double>(c.head_dim)};
}

// The batches a run's buffers are sized for: the training step's, and where the run evaluates,
// evaluation's forward (LlamaModel::loss), which runs in the same buffers. Buffers only grow,
// so one that both passes use takes the larger of its two sizes, and one only the backward uses
// (the gradients, the backward's scratch) the training's: a run that evaluates larger batches
// than it trains (HF's default evaluation batch is 8 sequences, its training batch 1) grows the
// forward's buffers alone.
struct Passes {
  Dims train;
  std::optional<Dims> eval;  // none: the run does not evaluate
  // A buffer both passes use at sizes of their own: `train_bytes`, or `eval_bytes` of
  // evaluation's dims, the larger.
  template <class F>
  double larger(double train_bytes, F eval_bytes) const {
    return std::max(train_bytes, eval ? eval_bytes(*eval) : 0.0);
  }
  // Buffers both passes use at the same formula: `bytes` of each pass's dims, the larger.
  template <class F>
  double both(F bytes) const {
    return larger(bytes(train), bytes);
  }
};

double largest_unit(const std::vector<double>& units) {
  return *std::max_element(units.begin(), units.end());
}

// Base weights: the units of the parameter table, padded to the world size when sharded, and
// ZeRO-3's gathered units in flight. Where the model runs (CPU or GPU).
void add_base_weights(MemoryEstimate& e, const LlamaConfig& c, const MemoryScenario& s,
                      const Dims& d) {
  const LayerLayout layout(c);
  std::vector<double> units{d.V * d.D, d.D};
  for (int l = 0; l < c.num_layers; ++l) units.push_back(static_cast<double>(layout.size()));
  if (!c.tie_word_embeddings) units.push_back(d.V * d.D);
  const bool sharded = s.zero_stage == 3 && s.world_size > 1;
  double base = 0;
  for (double n : units) base += sharded ? std::ceil(n / d.W) : n;
  e.items.push_back({sharded ? "base weights (this rank's 1/W shard)" : "base weights (whole)",
                     base * d.w_bytes});
  if (!sharded) return;
  // In flight: the unit in use and the prefetch_depth units after it, in the order they are
  // used (embedding, layers, final norm, lm_head; the backward the reverse): the largest such
  // window, not the largest unit times the window (the embedding and lm_head, the two largest,
  // are never gathered together).
  std::vector<double> order{d.V * d.D};
  for (int l = 0; l < c.num_layers; ++l) order.push_back(static_cast<double>(layout.size()));
  order.push_back(d.D);
  order.push_back(d.V * d.D);
  const std::size_t window = 1 + static_cast<std::size_t>(std::max(0, s.prefetch_depth));
  double in_flight = 0;
  for (std::size_t i = 0; i < order.size(); ++i) {
    double gathered = 0;
    for (std::size_t j = i; j < std::min(order.size(), i + window); ++j) gathered += order[j];
    in_flight = std::max(in_flight, gathered);
  }
  e.items.push_back(
      {"gathered units in flight (the one in use + prefetch)", in_flight * d.w_bytes});
  // --ddp_backend mpi on GPUs (comm/device_comm.cpp): each gather in flight holds the rank's
  // shard and the whole unit in host memory, and up to 4 released staging buffers stay pooled.
  if (s.gpu && s.staged)
    e.items.push_back({"host staging of the gathers (--ddp_backend mpi)",
                       (in_flight * (1 + 1 / d.W) + 4 * largest_unit(order)) * d.w_bytes, true});
}

// LoRA (lora_shards.hpp): replicated tensors whole, partitioned ones as this rank's shard, for
// parameters, gradients and AdamW moments; one layer gathered at a time; the whole vector only
// while initialising and saving. Host memory always (a GPU gets one layer at a time).
void add_lora_state(MemoryEstimate& e, const LoraLayout& lora, const MemoryScenario& s,
                    const Dims& d) {
  const LoraPartition plan(
      lora, s.zero_stage > 0 ? s.persistence_threshold : std::numeric_limits<Index>::max(),
      s.world_size);
  Index largest_shard = 0;
  for (const auto& l : plan.layers) largest_shard = std::max(largest_shard, l.shard);
  const double replicated = static_cast<double>(plan.replicated),
               shard = static_cast<double>(plan.shard);
  e.items.push_back({"LoRA parameters + gradients (fp32; partitioned part 1/W)",
                     8.0 * replicated + 8.0 * shard, s.gpu});
  e.items.push_back({"LoRA one-layer gather buffers",
                     4.0 * (2.0 * static_cast<double>(plan.largest_layer) +
                            static_cast<double>(largest_shard) * (2 * d.W + 1)),
                     s.gpu});
  e.items.push_back({"whole adapter (at start and when saving)", 4.0 * lora.size(), s.gpu});
  e.items.push_back(
      {"AdamW moments (fp32; partitioned part 1/W)", 8.0 * replicated + 8.0 * shard, s.gpu});
  if (s.gpu)
    e.items.push_back({"LoRA of one layer on the GPU (parameters + gradients)",
                       8.0 * static_cast<double>(plan.largest_layer)});
}

// Activations: every layer's level (model/recompute_plan.hpp), and one layer's working set
// shared by the layers backward recomputes and evaluation's forward.
void add_activations(MemoryEstimate& e, const LlamaConfig& c, const LoraLayout& lora,
                     const MemoryScenario& s, const Passes& p) {
  const Dims& d = p.train;
  const RecomputePlan kept_plan =
      make_recompute_plan(s.recompute, c, s.micro_batch * s.seq_len, LoraZShape::of(&lora.config()),
                          4, s.recompute_budget_bytes);
  // Evaluation's forward keeps no layer input: it runs in the two working copies
  // (LlamaModel::run_layers), which with the fp32 residual are the first two kept inputs.
  const auto eval_inputs = [&](const Dims& x) { return 4.0 * 2 * x.M * d.D; };
  if (s.bf16_residual)
    e.items.push_back({"layer inputs (bf16 every layer + 2 fp32 working copies)",
                       2.0 * (d.L + 1) * d.M * d.D + p.larger(4.0 * 2 * d.M * d.D, eval_inputs)});
  else
    e.items.push_back({"layer inputs (fp32, every layer, kept for backward)",
                       p.larger(4.0 * (d.L + 1) * d.M * d.D, eval_inputs)});
  const bool recomputed =
      std::any_of(kept_plan.levels.begin(), kept_plan.levels.end(), [](Recompute l) {
        return l == Recompute::kFull || l == Recompute::kAttention || l == Recompute::kAttentionMlp;
      });
  // Evaluation's forward (LlamaModel::loss) runs every layer in that one set too, and keeps it.
  const auto layer_set = [&](const Dims& x) {
    return 4.0 * kept_elements(Recompute::kSelective, c, static_cast<Index>(x.M),
                               LoraZShape::of(&lora.config()));
  };
  if (recomputed || p.eval)
    e.items.push_back({recomputed ? "one layer's activations (recomputed in backward)"
                                  : "one layer's activations (evaluation's forward)",
                       p.larger(recomputed ? layer_set(d) : 0.0, layer_set)});
  if (kept_plan.kept_bytes > 0)
    e.items.push_back({"kept for backward (" + describe_recompute_plan(kept_plan.levels) + ")",
                       kept_plan.kept_bytes});
  e.recompute = kept_plan;
}

// Whether SwiGLU's fp32 output and its gate/up gradient are written (and have buffers): always
// in fp32; in bf16 only for the LoRA branches that read them, on down and on gate or up, the
// projections reading their rounding (model/llama_layer.cpp).
std::pair<bool, bool> swiglu_values_written(const LoraLayout& lora, const MemoryScenario& s) {
  bool down = false, gate_up = false;
  for (const auto& entry : lora.entries()) {
    down |= entry.module == LoraModule::kDown;
    gate_up |= entry.module == LoraModule::kGate || entry.module == LoraModule::kUp;
  }
  return {!s.bf16 || down, !s.bf16 || gate_up};
}

// The MLP's row chunk (model/llama_layer.cpp mlp_chunk) and the fused lm_head's
// (LlamaModel::head_chunk_rows), or the batch's rows when fewer.
double mlp_chunk(const Dims& x) {
  return std::min(x.M, 1024.0);
}
double head_chunk(const Dims& x) {
  return std::min(x.M, 512.0);
}

// bf16 only: the layer workspace's copies of GEMM operands that the ops making them round as
// they write (model/llama_layer.hpp LayerWorkspace): the forward's, a norm's output [M, D] (in
// the buffer where training's backward rounds the attention's d(q/k/v) [M, W3]), the attention's
// [M, Qd] and SwiGLU's output [chunk, I]; the backward's, SwiGLU's gradient [chunk, 2I].
double producer_rounded_bytes(const MemoryScenario& s, const Passes& p) {
  if (!s.bf16) return 0.0;
  const double norms = p.larger(2.0 * p.train.M * std::max(p.train.D, p.train.W3),
                                [](const Dims& x) { return 2.0 * x.M * x.D; });
  const double forward =
      p.both([](const Dims& x) { return 2.0 * (x.M * x.Qd + mlp_chunk(x) * x.I); });
  return norms + forward + 2.0 * mlp_chunk(p.train) * 2 * p.train.I;
}

// The CPU kernels' buffers (ops/): attention's packed heads and per-thread tiles, MLP chunks,
// activation gradients, bf16 operands, the LoRA branch's scratch, the fused loss, oneDNN's
// packing, and the process itself. Evaluation's forward grows what the forward uses (counted
// whole where a buffer serves both passes).
void add_cpu_buffers(MemoryEstimate& e, const LlamaConfig& c, const LoraLayout& lora,
                     const MemoryScenario& s, const Passes& p) {
  const Dims& d = p.train;
  const double M = d.M, D = d.D, I = d.I, Qd = d.Qd, W3 = d.W3, r = d.r;
  const double block = 128, mm = s.bf16 ? 2.0 : 4.0;
  // ops/attention.cpp's tiled kernel (head dims above 64): qkv (the forward's) and dO (the
  // backward's) packed head by head in the matmul type, in one buffer (each segment padded to
  // 16 rows, counted as one segment a sequence); per-thread score tiles, dK/dV sums and a dQ tile.
  // The direct kernel of smaller heads (attention_direct.cpp) packs nothing; its per-thread tiles
  // are counted as the tiled one's.
  const bool packed = !attention_uses_direct(
      AttentionShape{c.num_heads, c.num_kv_heads, c.head_dim}, AttentionOptions{});
  const auto packed_rows = [](const Dims& x) { return x.M + 16.0 * x.B; };
  const double attention =
      (packed ? p.larger(mm * packed_rows(d) * (W3 + Qd),
                         [&](const Dims& x) { return mm * packed_rows(x) * W3; })
              : 0.0) +
      p.both([&](const Dims& x) {
        return s.threads * (2 * block * x.S * 4 + (s.bf16 ? 2 * block * x.S * 2 : 0.0) + block * 4 +
                            block * x.hd * 4 + 2 * x.S * x.hd * 4);
      });
  // gate_up (the forward's) and d_act (the backward's); SwiGLU's fp32 output (the forward's) and
  // gate/up gradient (the backward's) in buffers of their own where a LoRA branch reads them,
  // else (bf16: only their rounding wanted) in one scratch as large as the larger of them
  // (ops/cpu_kernels.cpp values_or_scratch).
  const auto [act_values, d_gate_up_values] = swiglu_values_written(lora, s);
  const double chunk = mlp_chunk(d);
  const double scratch = !d_gate_up_values ? 2 * I : (!act_values ? I : 0.0);
  const double mlp =
      p.both([&](const Dims& x) { return 4.0 * mlp_chunk(x) * (2 * I + (act_values ? I : 0.0)); }) +
      4.0 * chunk * (I + (d_gate_up_values ? 2 * I : 0.0)) +
      p.larger(4.0 * chunk * scratch,
               [&](const Dims& x) { return !act_values ? 4.0 * mlp_chunk(x) * I : 0.0; });
  const double gradients = 4.0 * (std::max(chunk, M) * D + M * Qd + M * W3 +
                                  M * D);  // dh, d_attn, d_qkv, residual: the backward's
  // The backward's rounded gradients (the forward's operands and d(q/k/v) come rounded by their
  // producers, the head's in its own item).
  const double operands = s.bf16 ? 2.0 * std::max({M * D, M * Qd, chunk * 2 * I}) : 0.0;
  // ops/lora_branch.hpp: fused ranks keep dz (the backward's) and a row per thread; larger
  // ones a dropped copy.
  const double lora_scratch =
      r <= kLoraFusedMaxRank
          ? 4.0 * M * r + 4.0 * 2.0 * s.threads * std::max(D, I)
          : p.both([&](const Dims& x) { return 4.0 * x.M * (std::max(D, I) + r); });
  e.items.push_back(
      {"backward and attention work buffers",
       attention + mlp + gradients + operands + lora_scratch + producer_rounded_bytes(s, p)});
  e.items.push_back({"fused lm_head + loss (logits chunk, operands)", p.both([&](const Dims& x) {
                       return 4.0 * head_chunk(x) * x.V + 4.0 * 3 * head_chunk(x) * D +
                              (s.bf16 ? 2.0 * head_chunk(x) * std::max(D, x.V) : 0.0);
                     })});
  // ops/matmul.cpp: bf16 backward-data GEMMs of 2^30 multiply-adds or more run on oneDNN's
  // gemm:jit, which packs b in buffers of its own, about 2048 rows of the widest b (bf16) plus
  // 8 MiB (measured: Llama-2-7B's shapes at seq 512, +40-70 MiB of peak RSS with 2 threads).
  const double widest = std::max(D, I);
  if (s.bf16 && M * D * std::max(2 * I, d.V) >= 1073741824.0)
    e.items.push_back(
        {"oneDNN gemm:jit packing (large backward GEMMs)", 2.0 * 2048 * widest + 8.0 * 1048576.0});
}

// The CUDA backend's buffers (src/cuda/cuda_kernels.cpp, cuda_lora.cpp, model/llama_layer.cpp):
// they only grow, so after the first backward they are all allocated at once. The layer's
// workspace's MLP chunk is 1024 rows, or the micro-batch's rows when fewer; the GEMMs' bf16
// operands share one buffer (the lm_head backward's included); cuDNN attention copies q/k/v, O and
// their gradients to bf16 and takes a workspace (its size comes from cuDNN at run time: estimated
// here as four bytes per token, head and head element); cuBLASLt's workspace is 32 MiB. Not
// counted, as the run's peak_device_mib does not count them: the CUDA context and the kernels' code
// (a few hundred MiB in nvidia-smi) and NCCL's own buffers. No kernel uses local memory (the
// build refuses one that does), so the driver reserves none for them.
void add_gpu_buffers(MemoryEstimate& e, const LlamaConfig& c, const LoraLayout& lora,
                     const MemoryScenario& s, const Passes& p) {
  const Dims& d = p.train;
  const double M = d.M, D = d.D, I = d.I, Qd = d.Qd, W3 = d.W3, V = d.V, r = std::max(d.r, 1.0);
  const double chunk = mlp_chunk(d), head = head_chunk(d);
  // SwiGLU's fp32 output and gate/up gradient have buffers only where a LoRA branch reads them
  // (in bf16 the projections read their rounding: model/llama_layer.cpp).
  const auto [act_values, d_gate_up_values] = swiglu_values_written(lora, s);
  const double act = act_values ? I : 0.0, d_gate_up = d_gate_up_values ? 2 * I : 0.0;
  // The forward's: gate/up and SwiGLU's output by chunks; the backward's: d_act, the gate/up
  // gradient, dh, d_attn, d_qkv and the residual stream's gradient.
  const double layer_work =
      p.both([&](const Dims& x) { return 4.0 * mlp_chunk(x) * (2 * I + act); }) +
      4.0 * chunk * (I + d_gate_up) + 4.0 * M * D + 4.0 * M * Qd + 4.0 * M * W3 + 4.0 * M * D;
  e.items.push_back(
      {"layer work buffers (MLP chunks, activation gradients, residual gradient)", layer_work});
  if (s.bf16) {
    // The forward rounds only the final norm's output into it (the layers' operands come
    // rounded by their producers); the backward its gradients.
    e.items.push_back({"bf16 GEMM operands (one shared buffer)",
                       p.larger(2.0 * std::max({M * std::max(D, Qd), chunk * 2 * I, head * V}),
                                [&](const Dims& x) { return 2.0 * head_chunk(x) * D; })});
    e.items.push_back(
        {"bf16 GEMM operands rounded by the ops that make them", producer_rounded_bytes(s, p)});
  }
  // The LoRA branch's backward: dz, and up to kLoraFusedMaxRank the fused kernels' partial sums of
  // dA and dB (src/cuda/lora.cu: r x the module's width per 256 rows); above it, with dropout, the
  // dropped input and its mask's work, each as large as the widest adapted input. Branches that
  // share their input (q, k, v over M rows; gate, up over a chunk's) run as a group up to
  // kLoraGroupMaxRank, with a dz and partial sums of dA for each branch side by side (counted
  // for the most of them any layer adapts: an upper bound where layers differ).
  double widest_input = 0, widest_partials = 0;
  std::set<LoraModule> qkv, gate_up;
  for (const auto& entry : lora.entries()) {
    const double width = static_cast<double>(entry.is_b ? entry.rows : entry.cols);
    const bool mlp = entry.module == LoraModule::kGate || entry.module == LoraModule::kUp ||
                     entry.module == LoraModule::kDown;
    const double rows = mlp ? chunk : M;
    widest_partials = std::max(widest_partials, std::ceil(rows / 256) * r * width);
    if (!entry.is_b) widest_input = std::max(widest_input, rows * width);  // A: [r, in]
    if (entry.module == LoraModule::kQ || entry.module == LoraModule::kK ||
        entry.module == LoraModule::kV)
      qkv.insert(entry.module);
    if (entry.module == LoraModule::kGate || entry.module == LoraModule::kUp)
      gate_up.insert(entry.module);
  }
  const bool fused = r <= kLoraFusedMaxRank;
  double dz = M * r;
  if (r <= kLoraGroupMaxRank) {
    const double qkv_group = static_cast<double>(qkv.size());
    const double gate_up_group = static_cast<double>(gate_up.size());
    dz = std::max({dz, qkv_group * M * r, gate_up_group * chunk * r});
    widest_partials = std::max({widest_partials, qkv_group * std::ceil(M / 256) * r * D,
                                gate_up_group * std::ceil(chunk / 256) * r * D});
  }
  e.items.push_back({fused ? "LoRA branch scratch (dz; dA and dB partial sums)"
                           : "LoRA branch scratch (dz; dropout's dropped inputs)",
                     4.0 * dz + (fused                       ? 4.0 * widest_partials
                                 : lora.config().dropout > 0 ? 2 * 4.0 * widest_input
                                                             : 0.0)});
  const bool cudnn = s.bf16 && cudnn_supports_head_dim(c.head_dim);
  if (cudnn) {
    // The workspace (the cuDNN frontend's composite backward, sized from the gradient layouts
    // of cudnn_attention.cpp) over the backward's token bound: fp32 row sums, with GQA fp32 dK
    // and dV summed per query head, and either the deterministic backward's dP (slots x heads x
    // S^2 bf16 per call, the calls' groups of segments and of heads within a budget and a cap
    // whose bound for M tokens in segments of at most the sequence length is
    // cudnn_dp_bytes_bound) or the atomic one's fp32 dQ accumulator (ZEROLORA_CUDNN_BACKWARD;
    // one call over every head; where the frontend drops the token bound, a head size not a
    // multiple of 16, counted for the batch cut into equal segments of up to the sequence
    // length, the largest over their lengths).
    const AttentionShape shape{c.num_heads, c.num_kv_heads, c.head_dim};
    const auto rows = static_cast<double>(cudnn_padded_rows(static_cast<Index>(M)));
    const CudnnBackward backward = cudnn_backward_from_environment();
    const bool atomic = backward != CudnnBackward::kDeterministic;
    const double tokens =
        atomic ? rows : static_cast<double>(cudnn_size_bucket(static_cast<Index>(M)));
    double scratch = 0;
    if (atomic) {
      // Ragged (a head size a multiple of 16), the accumulator follows the rows alone: one L.
      const Index longest = std::min(static_cast<Index>(d.S), static_cast<Index>(M));
      for (Index L = c.head_dim % 16 == 0 ? longest : 1; L <= longest; ++L) {
        const Index slots = cudnn_slot_count((static_cast<Index>(M) + L - 1) / L);
        scratch =
            std::max(scratch, cudnn_dq_accumulator_bytes(backward, static_cast<Index>(rows), slots,
                                                         cudnn_size_bucket(L), c.num_heads, shape));
      }
    } else {
      scratch = cudnn_dp_bytes_bound(static_cast<Index>(M), static_cast<Index>(d.S), shape,
                                     cudnn_dp_workspace_cap_from_environment());
    }
    const double gqa_sums = c.num_kv_heads < c.num_heads ? 2.0 * d.heads * d.hd : 0.0;
    const double workspace = 4.0 * tokens * (d.heads + gqa_sums) + scratch;
    // The statistics, and their aligned copy where a deterministic call's slice may start off
    // 16 bytes: where the second KV head's does (cudnn_stats_slice_aligned), a call may start
    // there.
    const bool copied = !atomic && c.num_kv_heads > 1 && !cudnn_stats_slice_aligned(1, shape);
    const double stats_copies = copied ? 2.0 : 1.0;
    // The forward's: bf16 q/k/v and O, and the statistics (evaluation's forward takes no more
    // workspace than the training's backward, the buffer they share: not measured).
    const double forward = p.both([&](const Dims& x) {
      const auto padded = static_cast<double>(cudnn_padded_rows(static_cast<Index>(x.M)));
      return 2.0 * padded * (W3 + Qd) + 4.0 * padded * x.heads;
    });
    e.items.push_back(
        {atomic ? "attention (cuDNN: bf16 q/k/v, O, grads, stats; atomic dQ, est.)"
                : "attention (cuDNN: bf16 q/k/v, O, gradients, stats; workspace, est.)",
         forward + 2.0 * rows * (W3 + Qd) + (stats_copies - 1) * 4.0 * rows * d.heads + workspace});
  } else {
    // The backward's row sums; the segment index, both passes'.
    e.items.push_back({"attention (reference kernel: row sums, segment index)",
                       4.0 * M * d.heads + p.both([](const Dims& x) { return 4.0 * x.M; })});
  }
  // The head's buffers, both passes': a chunk's logits, rows, normed rows and their gradient,
  // norm statistics (fp32) and per-row losses (fp64); the batch's row ids and targets (int32).
  e.items.push_back({"fused lm_head + loss (logits chunk, rows)", p.both([&](const Dims& x) {
                       return 4.0 * head_chunk(x) * V + 4.0 * 3 * head_chunk(x) * D +
                              (4.0 + 8.0) * head_chunk(x) + 8.0 * x.M;
                     })});
  // The batch's tokens follow M, the RoPE tables the longest sequence: buffers of their own.
  const double batch = p.both([](const Dims& x) { return 16.0 * x.M; });
  const double rope = p.both([](const Dims& x) { return 4.0 * x.S * x.hd; });
  e.items.push_back(
      {"tokens, positions, RoPE tables, cuBLASLt workspace", batch + rope + 32.0 * 1048576.0});
}

}  // namespace

MemoryEstimate estimate_memory(const LlamaConfig& c, const LoraLayout& lora,
                               const MemoryScenario& s) {
  Passes p{dims_of(c, lora, s), std::nullopt};
  if (s.eval_micro_batch > 0) {
    MemoryScenario eval = s;
    eval.micro_batch = s.eval_micro_batch;
    eval.seq_len = s.eval_seq_len > 0 ? s.eval_seq_len : s.seq_len;
    p.eval = dims_of(c, lora, eval);
  }
  MemoryEstimate e;
  add_base_weights(e, c, s, p.train);
  add_lora_state(e, lora, s, p.train);
  add_activations(e, c, lora, s, p);
  if (s.gpu)
    add_gpu_buffers(e, c, lora, s, p);
  else
    add_cpu_buffers(e, c, lora, s, p);
  e.items.push_back({"tokenized training set", 8.0 * static_cast<double>(s.dataset_tokens), s.gpu});
  // Measured: the resident set at the step's peak less every live block of 64 KiB or more
  // (libraries, oneDNN, MPI, the tokenizer, small blocks), with the 1 MiB mmap threshold the
  // runtime sets (core/system_memory.hpp): 27 MiB at W = 1 and 39 MiB at W = 2 (a 430 MB
  // Llama, the Llama-2 tokenizer, the public Alpaca records, 1 thread).
  e.items.push_back({s.gpu ? "runtime (libraries, oneDNN, MPI; the CUDA libraries not counted)"
                           : "runtime (libraries, oneDNN, MPI)",
                     (s.world_size > 1 ? 40.0 : 28.0) * 1048576.0, s.gpu});
  return e;
}

double gpu_recompute_budget_bytes(const LlamaConfig& c, const LoraLayout& lora, MemoryScenario s,
                                  double free_bytes) {
  s.gpu = true;
  s.recompute = Recompute::kAuto;
  const double usable =
      free_bytes - std::max(kGpuRecomputeMargin * free_bytes, kGpuRecomputeMarginFloorBytes);
  // The plan keeps at most its budget beyond full recompute's, and where no layer recomputes it
  // also drops full recompute's one layer's working set: the estimate grows by at most the budget.
  s.recompute_budget_bytes = 0;  // every layer at full recompute
  return std::max(usable - estimate_memory(c, lora, s).total(), 0.0);
}

double run_recompute_budget_bytes(const LlamaConfig& c, const LoraLayout& lora,
                                  const MemoryScenario& s, double budget_mib,
                                  std::optional<double> gpu_free_bytes) {
  if (budget_mib >= 0 || !gpu_free_bytes || s.recompute != Recompute::kAuto)
    return recompute_budget_from_mib(budget_mib);
  return gpu_recompute_budget_bytes(c, lora, s, *gpu_free_bytes);
}

}  // namespace zerolora
