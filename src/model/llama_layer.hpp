// One Llama decoder layer, forward and backward, with LoRA on any of its seven projections:
//   h1 = rmsnorm(x);  [q k v] = h1 Wqkv^T (+ LoRA);  rope(q, k);  a = attention(q, k, v)
//   x2 = x + a Wo^T (+ LoRA);  h2 = rmsnorm(x2);  [g u] = h2 Wgu^T (+ LoRA)
//   out = x2 + (silu(g) * u) Wd^T (+ LoRA)
// Forward saves what backward needs in LayerActivations. The MLP works on row chunks so its
// [rows, 2I] intermediates stay bounded; with recompute, backward recomputes g and u chunk by
// chunk and the recompute forward skips the down projection, whose output backward never needs.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "core/device.hpp"
#include "core/runtime.hpp"
#include "io/llama_config.hpp"
#include "lora/lora_layout.hpp"
#include "model/lora_source.hpp"
#include "model/parameter_table.hpp"
#include "model/recompute_plan.hpp"
#include "ops/attention.hpp"
#include "ops/kernels.hpp"
#include "ops/lora_branch.hpp"
#include "ops/rope.hpp"

namespace zerolora {

struct ComputeOptions {
  // What every layer keeps for backward (model/recompute_plan.hpp); kAuto: per layer, the least
  // recompute that fits recompute_budget_bytes (< 0: default_recompute_budget_bytes).
  Recompute recompute = Recompute::kFull;
  double recompute_budget_bytes = -1;
  AttentionOptions attention;   // tile size, bf16 softmax
  Index mlp_chunk_rows = 1024;  // MLP rows processed at once (bounds [rows, 2I] buffers)
  Index head_chunk_rows = 512;  // logits rows materialised at once by the fused lm_head + loss
  // Round the residual stream to bf16 where it enters each layer, and keep the layer inputs
  // for backward in bf16: half the largest activation memory of a long run (the (L + 1) x M x D
  // inputs), and the precision of a bf16 model's hidden states in PyTorch. Forward, recompute
  // and evaluation all see the rounded values, so gradients stay exact for the function
  // computed. Needs bf16 weights (the fp32 mode stays fp32 throughout).
  bool bf16_residual = false;
  // Fault injection for the tests of the non-finite guard: the next training pass writes a
  // NaN into the output of this decoder layer (-1: never). The trainer sets it for one step.
  int poison_layer_output = -1;
};

// Per-batch data shared by every layer, on the device (segments stay on the host: the kernels
// upload what they need of them).
struct BatchGeometry {
  Index rows = 0;
  const std::vector<Segment>* segments = nullptr;
  DeviceBuffer<std::int32_t> tokens;     // [M]
  DeviceBuffer<std::int32_t> positions;  // [M] position inside the segment
  DeviceBuffer<std::uint64_t> row_keys;  // [M] (sample, position) key for dropout masks
};

// LoRA state seen by a layer: parameters, gradients (null when not training) and dropout.
template <class T>
struct LoraBinding {
  const LoraLayout* layout = nullptr;  // null: no adapters
  LoraSource<T>* source = nullptr;     // where each layer's view comes from
  bool dropout = false;                // apply LoRA dropout (training only)
  std::uint64_t dropout_key = 0;       // (seed, step)
  LoraLayerView<T> view;               // the current layer's tensors (see lora_source.hpp)
  const T* param(Index offset) const { return view.params + (offset - view.base); }
  T* grad(Index offset) const { return view.grads + (offset - view.base); }
};

// What the layer's backward needs from its forward.
template <class T>
struct LayerActivations {
  DeviceBuffer<T> rstd1, h1, qkv, attn, lse, x2, rstd2, h2;  // see llama_layer.cpp for shapes
  // [M, r] per adapted module (the others' empty), made by the forward that ran its module
  // (training's first), read by the recompute and the backward.
  std::array<DeviceBuffer<T>, kLoraModuleCount> lora_z;
  DeviceBuffer<T> gate_up;  // [M, 2I], only when mlp_saved
  bool mlp_saved = false;
};

// Scratch reused across layers and steps (the kernels keep their own).
template <class Act>
struct LayerWorkspace {
  DeviceBuffer<Act> gate_up, act, d_act, d_gate_up, dh, d_attn, d_qkv;
  // The bf16 policy's GEMM operands, rounded by the ops that make them (kernels.hpp
  // GemmOperand): the norms' outputs (one buffer: h1's copy is spent when h2's is made; the
  // backward's attention gradient d(q/k/v) takes it too, the norms' copies spent by then), the
  // attention's output, SwiGLU's output and its gradient. Unused in the other policies.
  DeviceBuffer<bf16> h_rounded, attn_rounded, act_rounded, d_gate_up_rounded;
};

// One layer's slice of a generation KV cache: keys and values of every position so far.
template <class T>
struct KvCacheLayer {
  DeviceBuffer<T> keys, values;  // [capacity, KV * hd]
};

template <class P>
struct LayerContext {
  using Act = typename P::Act;
  using Weight = typename P::Weight;
  Runtime& rt;
  Kernels<P>& kernels;
  Device& device;
  const LlamaConfig& config;
  const LayerLayout& layout;
  const Weight* weights;  // this layer's unit buffer (gathered, under ZeRO-3)
  int layer;
  const BatchGeometry& geometry;
  const RopeTable& rope;
  const ComputeOptions& options;
  LoraBinding<Act> lora;  // with this layer's view
  LayerWorkspace<Act>& workspace;
  // Generation: append this pass's keys/values at `cached` and attend over the cache.
  KvCacheLayer<Act>* cache = nullptr;
  Index cached = 0;
};

// How a forward treats the activations it writes into LayerActivations.
struct ForwardKeep {
  bool mlp = false;              // keep the [M, 2I] gate/up outputs (no recompute)
  bool attention_ready = false;  // acts.attn and acts.lse already hold this layer's attention,
                                 // kept from the first forward: the recompute skips it
  bool mlp_ready = false;        // acts.gate_up already holds its gate/up outputs, kept
                                 // from the first forward: the recompute stops before the
                                 // MLP (backward reads them as if kept with `mlp`)
  bool lora_ready = false;       // acts.lora_z already hold the adapted modules' z, kept
                                 // from the first forward: the recompute (out null) expands
                                 // q's, k's, v's and o's without contracting h1 and attn again
                                 // (layer_backward reads every z from acts whatever this says,
                                 // gate's and up's in its gate/up recompute)
};

// x [M, D] -> out [M, D] (out may be null: recompute for backward, down projection skipped).
template <class P>
void layer_forward(LayerContext<P>& ctx, typename P::Act* out, const typename P::Act* x,
                   LayerActivations<typename P::Act>& acts, ForwardKeep keep = {});

// dx [M, D]: on entry d(out), on exit d(x) (residual stream, updated in place).
// LoRA gradients accumulate into ctx.lora.view.grads; every LoRA z is read from acts, where
// the forward that ran the whole layer (training's first) made it. attention_inputs: kLastForwards
// where the layer's forward has just run on acts, its attention included, and nothing since has run
// an attention on ctx.kernels (the full recompute), so that the kernels may use the copies they
// made of acts.qkv, acts.attn and acts.lse then (Kernels::attention_backward).
template <class P>
void layer_backward(LayerContext<P>& ctx, typename P::Act* dx, const typename P::Act* x,
                    LayerActivations<typename P::Act>& acts,
                    AttentionInputs attention_inputs = AttentionInputs::kAny);

}  // namespace zerolora
