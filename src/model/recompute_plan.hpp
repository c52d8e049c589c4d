// What each decoder layer keeps from its forward for backward, and what backward recomputes
// instead (Megatron's "recompute granularity", chosen per layer). The levels:
//   kFull          the layer's input and the LoRA z of its adapted modules (r values a row
//                  each: at Llama-2-7B's shape and the seed's r 4 on q/k/v/o, 0.4% of a hidden
//                  state), so that the recompute adds their expansions without contracting h1,
//                  attn, h2 and SwiGLU's output again; backward recomputes the whole layer
//   kAttention     + the attention output and its log-sum-exp ([M, q] + [H, M]: one hidden
//                  state): backward recomputes the layer but not its attention forward, the
//                  dominant cost of small heads and long sequences
//   kAttentionMlp  + the MLP's [M, 2I] gate/up outputs: backward recomputes only the attention
//                  block's projections and norms (q/k/v and o: 4 D^2 multiply-adds a row for
//                  Llama-2-7B against gate/up's 5.4 D^2), neither the attention nor gate/up
//   kSelective     kAttention + every attention-block activation (h1, qkv, x2, h2, norms):
//                  backward recomputes only the MLP's gate/up, chunk by chunk
//   kNone          everything (kSelective + the gate/up outputs): nothing is recomputed
// Each level keeps a superset of kFull and kAttention's and a subset of kNone's; kAttentionMlp
// and kSelective are two ways between (gate/up outputs or the attention block). kAuto is a mode,
// not a level: each layer gets the least recompute that fits a memory budget (plan_recompute),
// by way of the one of the two that suits the model (auto_middle_level).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "io/llama_config.hpp"
#include "lora/lora_config.hpp"

namespace zerolora {

enum class Recompute { kFull, kAttention, kAttentionMlp, kSelective, kNone, kAuto };

// "full", "attention", "attention_mlp", "selective", "none", "auto"; parse_recompute throws
// ConfigError naming `flag` for anything else.
const char* recompute_name(Recompute mode);
Recompute parse_recompute(const std::string& name, const std::string& flag);

// The LoRA z a layer makes: one [M, rank] z for each adapted module (of: none without a
// config).
struct LoraZShape {
  int rank = 0;
  int modules = 0;
  static LoraZShape of(const LoraConfig* lora) {
    return lora ? LoraZShape{lora->rank, lora->module_count()} : LoraZShape{};
  }
};

// Elements one layer keeps at `level` for a micro-batch of `rows` tokens (what layer_forward
// allocates; kFull keeps only its LoRA z: the rest of its working set is shared). The layers
// that share the working set borrow its buffers in turn, so a plan's sum and the working set
// together count one layer's LoRA z and attention output more than the model holds (the safe
// side).
double kept_elements(Recompute level, const LlamaConfig& config, double rows, LoraZShape lora);

// kAuto's default budget: 8 bytes per logit of the micro-batch (rows x vocab x 8). Transformers'
// loss materialises the logits: bf16 from the lm_head, an fp32 copy, the fp32 log-softmax kept
// for backward, then its gradient and its input's; measured (bench/py/hf_loss_memory.py), its
// peak RSS grows by 10 bytes per logit in the forward and 12 through the backward, on top of
// PyTorch's checkpoints. zerolora's chunked lm_head + loss never holds them, so spending 8 bytes
// per logit (a third kept back for zerolora's own loss chunk and allocator slack) on kept
// activations stays within what PyTorch's checkpointed training of the same job holds.
// Never below kRecomputeBudgetFloorBytes, about zerolora's own runtime footprint (28-40 MiB): on
// small models and vocabularies (stories260K: 2 MiB for 4 x 256 tokens) 8 bytes per logit buys
// recompute that saves a few MiB at a fifth of the step's time (BENCHMARKS.md), while
// PyTorch's process alone holds 530 MiB before its first tensor (`import torch`, measured).
inline constexpr double kRecomputeBudgetFloorBytes = 32.0 * 1048576.0;
double default_recompute_budget_bytes(const LlamaConfig& config, double rows);

// The level kAuto plans between attention and none: kAttentionMlp where the MLP's gate/up GEMM
// is at least twice the attention block's q/k/v and o GEMMs (2 D I >= 2 (D W3 + q D): GQA
// models with wide MLPs, as Llama-3, Mistral, Qwen2.5 and Llama-2-70B), kSelective otherwise.
// Why twice and not once: the block's recompute also runs its norms, RoPE, LoRA branches and
// conversions, which cost about as much as its GEMMs on the CPUs measured (BENCHMARKS.md):
// Llama-2-7B (ratio 1.34) recomputes either in the same time, stories260K (1.79) selective's
// 8% faster, Llama-3-8B (2.8) and Llama-2-70B's layer (3.1) attention_mlp's 7% and 5% faster.
Recompute auto_middle_level(const LlamaConfig& config);

// Each layer's level under `budget_bytes` of activations kept beyond full recompute's
// (element_bytes per element): first every layer keeps its attention output (as many layers as fit,
// from layer 0), then layers are promoted to auto_middle_level, then to none, one layer at a time
// while the budget lasts. Levels only grow along the way (each keeps a superset of the one before),
// so a larger budget never recomputes more.
std::vector<Recompute> plan_recompute(const LlamaConfig& config, double rows, LoraZShape lora,
                                      std::size_t element_bytes, double budget_bytes);

// --recompute_budget_mib in bytes; a negative value (the flags' default) stays negative, which
// make_recompute_plan reads as "the default budget".
double recompute_budget_from_mib(double mib);

// Every layer's level for `mode`, and what it costs: kAuto plans under `budget_bytes` (negative:
// default_recompute_budget_bytes for `rows`); any other mode is every layer's level. The one
// place the model, the memory estimate and the train log resolve a plan, so they never disagree.
struct RecomputePlan {
  std::vector<Recompute> levels;
  double budget_bytes = 0;  // the budget kAuto planned under (0 for a fixed level)
  double kept_bytes = 0;    // sum of kept_elements over the layers x element_bytes
};
RecomputePlan make_recompute_plan(Recompute mode, const LlamaConfig& config, double rows,
                                  LoraZShape lora, std::size_t element_bytes, double budget_bytes);

// "5 attention" / "2 selective + 3 attention" / "4 full": the plan in words for the log.
std::string describe_recompute_plan(const std::vector<Recompute>& levels);

}  // namespace zerolora
