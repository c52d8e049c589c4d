// The Llama causal LM with LoRA adapters, on the runtime's device (the kernel interface of
// src/ops/kernels.hpp): logits for inference and the fused forward + backward of a training
// micro-batch. Inputs and outputs of the public functions are host memory; on a device the
// host cannot address, the model stages them, and its weights and LoRA tensors, through the
// Device interface (device_mirror.hpp).
//
// Training step (recompute on, the default):
//   x0 = embed(tokens); x_{l+1} = layer_l(x_l), keeping only the x_l;
//   loss and d x_L from the final norm and a fused lm_head + cross-entropy that materialises
//   head_chunk_rows rows of logits at a time and only for tokens that have a target;
//   for l = L-1 .. 0: recompute layer l's activations from x_l, then its backward.
// With options.bf16_residual the x_l are rounded to bf16 and kept as bf16 (two fp32 working
// slots hold the ones in use).
// What else each layer keeps, and so what backward recomputes, is the layer's recompute level
// (model/recompute_plan.hpp): one level for all, or with Recompute::kAuto the plan that fits the
// budget. Layers recomputed in backward share one working set; a layer keeping only its
// attention output swaps that buffer with the working set's, so the recompute finds it in place.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/device.hpp"
#include "core/runtime.hpp"
#include "model/batch.hpp"
#include "model/device_mirror.hpp"
#include "model/llama_layer.hpp"
#include "model/lora_source.hpp"
#include "model/weight_provider.hpp"

namespace zerolora {

// Identifies a training step for dropout masks: (seed, step) -> masks.
struct StepKey {
  std::uint64_t seed = 0;
  std::uint64_t step = 0;
};

// The keys and values of every layer for the positions generated so far.
template <class T>
struct KvCache {
  std::vector<KvCacheLayer<T>> layers;
  Index length = 0;    // positions cached
  Index capacity = 0;  // positions the buffers hold
};

// nonfinite_site() in words: "the output of decoder layer 3 (model.layers.3)".
std::string describe_nonfinite_site(int site, Index num_layers);

template <class P>
class LlamaModel {
 public:
  using Act = typename P::Act;
  using Weight = typename P::Weight;

  // `lora` may be null (no adapters). Weights and layout must outlive the model.
  LlamaModel(Runtime& rt, WeightProvider<Weight>& weights, const LoraLayout* lora,
             ComputeOptions options = {});

  const LlamaConfig& config() const { return host_weights_.config(); }
  const ComputeOptions& options() const { return options_; }
  ComputeOptions& options() { return options_; }

  // logits (=) [M, V], or [segments, V] for each segment's last token when last_only.
  // LoRA dropout is off (evaluation mode).
  void forward_logits(const Batch& batch, std::span<const Act> lora_params, Act* logits,
                      bool last_only = false);

  // Generation: a cache for up to `capacity` positions, and one pass that runs `tokens` (the
  // prompt, then one token at a time) through the model after what the cache holds,
  // appending to it; writes the logits [V] of the last token.
  KvCache<Act> make_cache(Index capacity) const;
  void forward_cached(std::span<const std::int32_t> tokens, KvCache<Act>& cache,
                      std::span<const Act> lora_params, Act* last_logits);

  // Summed token loss of the batch, no gradients.
  double loss(const Batch& batch, std::span<const Act> lora_params);
  double loss(const Batch& batch, LoraSource<Act>& lora);

  // Forward and backward. Adds grad_scale * d(summed loss)/d(LoRA) into lora_grads
  // (grad_scale = 1 / label tokens of the global batch gives the mean-loss gradient).
  // Returns the summed token loss.
  double forward_backward(const Batch& batch, std::span<const Act> lora_params,
                          std::span<Act> lora_grads, double grad_scale, const StepKey& key);
  // The same with the LoRA tensors acquired layer by layer from `lora` (ZeRO-3), which
  // receives each layer's gradients when its backward is done.
  double forward_backward(const Batch& batch, LoraSource<Act>& lora, double grad_scale,
                          const StepKey& key);

  // After a forward_backward: where its forward pass first went non-finite, found by scanning
  // the layer inputs kept for backward, only when the loss is not finite. -1: the loss was
  // finite; 0: the embedding output; l + 1: the output of decoder layer l; L + 1: every
  // layer's output was finite (the final norm, lm_head or loss). describe_nonfinite_site()
  // says it in words.
  int nonfinite_site() const { return nonfinite_site_; }

  // Bytes held for backward between forward and backward (what the recompute mode decides).
  std::size_t saved_activation_bytes() const;
  // Each layer's recompute level in the last forward_backward (never kAuto).
  const std::vector<Recompute>& recompute_levels() const { return levels_; }
  // What the kernels chose that the run should tell (Kernels::take_notes), since the last call.
  std::vector<std::string> take_kernel_notes() { return kernels_->take_notes(); }

 private:
  // Validates the batch and uploads its tokens and geometry; positions start at first_position
  // (generation continues after the cached ones).
  void prepare(const Batch& batch, Index first_position = 0);
  // The provider the kernels read from: the host one, or its device mirror.
  WeightProvider<Weight>& weights() { return device_weights_ ? *device_weights_ : host_weights_; }
  // Runs `pass` with the LoRA source the kernels can read (mirrored on a device when needed).
  template <class Pass>
  auto with_device_lora(LoraSource<Act>& source, Pass&& pass);
  LayerContext<P> layer_context(int layer, const Weight* weights, const LoraBinding<Act>& lora);
  // The units a pass acquires, in order; training adds the layers again in reverse.
  std::vector<UnitId> schedule(bool backward) const;
  LoraBinding<Act> bind_lora(LoraSource<Act>* source, bool dropout, const StepKey& key) const;
  // The whole-vector LoRA source for the span entry points, sizes checked against the layout
  // (the gradients' too when training).
  WholeLora<Act> whole_lora(std::span<const Act> params) const;
  WholeLora<Act> whole_lora(std::span<const Act> params, std::span<Act> grads) const;
  void check_lora_size(std::size_t values, const char* what) const;
  // Runs the decoder stack on x_0; keeps every layer input when keep_inputs, and what each
  // layer's level says (levels empty: nothing, a pass without backward).
  void run_layers(const Batch& batch, const LoraBinding<Act>& lora, bool keep_inputs,
                  std::span<const Recompute> levels);
  // levels_ for this batch's rows, from options_; frees what a layer no longer keeps.
  void plan_levels();
  // Layer l's backward, recomputing what its level did not keep.
  void layer_backward_pass(LayerContext<P>& ctx, int layer);
  Act* layer_input(int layer);
  // After x_l is written: rounds it to bf16 (bf16_residual) and keeps the bf16 copy.
  void seal_layer_input(int layer);
  // Before layer l's backward: brings x_l back from its bf16 copy when kept that way.
  void restore_layer_input(int layer);
  // The first kept layer input x_l holding NaN or Inf (see nonfinite_site()).
  int locate_nonfinite();
  // Final norm + lm_head + loss over rows with targets; writes d(x_L) when want_grad.
  double head_loss(const Batch& batch, double grad_scale, bool want_grad);
  // Releases a unit when it goes out of scope.
  using Acquired = AcquiredUnit<Weight>;
  Acquired acquire(UnitId unit) { return {weights(), unit, weights().acquire(unit)}; }
  // A layer's LoRA view for the length of a layer pass. finish() hands the gradients over;
  // otherwise (forward, or unwinding) the view is released without communication.
  struct AcquiredLora {
    LoraBinding<Act> binding;
    int layer;
    bool with_grads;
    bool finished = false;
    void finish() {
      if (binding.source) binding.source->release(layer, with_grads);
      finished = true;
    }
    ~AcquiredLora() {
      if (!finished && binding.source) binding.source->release(layer, false);
    }
  };
  AcquiredLora acquire_lora(const LoraBinding<Act>& lora, int layer, bool with_grads);

  // Logits for the caller: written straight into `host` when the host can address the device,
  // else into a staging buffer that finish_output() copies back.
  Act* output_buffer(Act* host, Index n);
  void finish_output(Act* host, Index n);

  Runtime& rt_;
  Device& device_;
  WeightProvider<Weight>& host_weights_;
  // Host weights copied to a device the host cannot address (ZeRO-3's store is on it already).
  std::unique_ptr<DeviceWeights<Weight>> device_weights_;
  std::vector<LoraSpan> lora_spans_;  // per layer, for the device mirror
  const LoraLayout* lora_;
  ComputeOptions options_;
  std::unique_ptr<Kernels<P>> kernels_;
  RopeTable rope_;
  BatchGeometry geometry_;
  std::vector<std::int32_t> positions_host_, head_rows_host_, head_targets_host_;
  std::vector<std::uint64_t> row_keys_host_;
  LayerWorkspace<Act> workspace_;
  std::vector<Recompute> levels_;                   // per layer
  Index planned_rows_ = 0;                          // the largest batch levels_ was planned for
  std::vector<LayerActivations<Act>> activations_;  // per layer: what its level keeps
  LayerActivations<Act> working_;  // layers recomputed in backward, and passes without one

  DeviceBuffer<Act> inputs_;  // [(L + 1), M, D] layer inputs (only 2 slots when not training)
  bool all_inputs_ = false;
  DeviceBuffer<bf16> kept_inputs_;  // [(L + 1), M, D] with bf16_residual when training
  bool keep_bf16_inputs_ = false;
  int nonfinite_site_ = -1;
  DeviceBuffer<Act> final_rstd_, final_h_, d_final_h_, head_rows_, head_logits_, residual_grad_;
  DeviceBuffer<Act> output_staging_;
  DeviceBuffer<std::int32_t> head_row_ids_, head_targets_;
};

}  // namespace zerolora
