#include "model/llama_model.hpp"

#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>

#include "core/error.hpp"
#include "core/precision.hpp"
#include "core/profiler.hpp"
#include "core/rng.hpp"
#include "model/backend.hpp"

namespace zerolora {
namespace {

// Whether a layer at `level` keeps a whole LayerActivations of its own (the forward writes into
// it) rather than sharing the working set with the layers backward recomputes.
bool keeps_own_activations(Recompute level) {
  return level == Recompute::kSelective || level == Recompute::kNone;
}

// What a layer sharing the working set keeps of it between its forward and its backward: its
// LoRA z (at every such level: M x r values an adapted module, which spare the recompute its
// contractions of h1, attn, h2 and SwiGLU's output), also the attention output (kAttention),
// also the gate/up outputs (kAttentionMlp). Swapped, never copied: after the forward into the
// layer's own, before the recompute back. Nothing where a and b are one (a forward without a
// plan runs on the working set alone).
template <class T>
void swap_kept(LayerActivations<T>& a, LayerActivations<T>& b, Recompute level) {
  if (&a == &b || keeps_own_activations(level)) return;
  std::swap(a.lora_z, b.lora_z);
  if (level == Recompute::kFull) return;
  std::swap(a.attn, b.attn);
  std::swap(a.lse, b.lse);
  if (level == Recompute::kAttentionMlp) std::swap(a.gate_up, b.gate_up);
}

}  // namespace

std::string describe_nonfinite_site(int site, Index num_layers) {
  if (site < 0) return "nowhere in the forward pass (the loss was finite)";
  if (site == 0) return "the embedding output (model.embed_tokens)";
  if (site <= num_layers)
    return "the output of decoder layer " + std::to_string(site - 1) + " (model.layers." +
           std::to_string(site - 1) + ")";
  return "the final norm, lm_head or loss (every decoder layer's output was finite)";
}

template <class P>
LlamaModel<P>::LlamaModel(Runtime& rt, WeightProvider<Weight>& weights, const LoraLayout* lora,
                          ComputeOptions options)
    : rt_(rt),
      device_(rt.device()),
      host_weights_(weights),
      lora_(lora),
      options_(options),
      kernels_(make_kernels<P>(rt)),
      rope_(weights.config().rope, weights.config().head_dim) {
  if (!device_.host_accessible()) {
    if (!weights.device_memory())
      device_weights_ = std::make_unique<DeviceWeights<Weight>>(device_, host_weights_);
    if (lora_) lora_spans_ = lora_layer_spans(*lora_, config().num_layers);
  }
  if (options_.bf16_residual && !std::is_same_v<Weight, bf16>)
    throw ConfigError(std::string("a bf16 residual stream needs bf16 weights; the ") +
                      std::string(P::kName) + " mode keeps everything in " + std::string(P::kName));
}

template <class P>
std::vector<UnitId> LlamaModel<P>::schedule(bool backward) const {
  const int L = static_cast<int>(config().num_layers);
  std::vector<UnitId> units{{Unit::kEmbedding}};
  for (int l = 0; l < L; ++l) units.push_back({Unit::kLayer, l});
  units.push_back({Unit::kFinalNorm});
  units.push_back(lm_head_unit(config()));
  if (backward)
    for (int l = L - 1; l >= 0; --l) units.push_back({Unit::kLayer, l});
  return units;
}

template <class P>
void LlamaModel<P>::prepare(const Batch& batch, Index first_position) {
  batch.validate(config().vocab_size);
  const Index M = batch.size();
  const auto m = static_cast<std::size_t>(M);
  geometry_.rows = M;
  geometry_.segments = &batch.segments;
  positions_host_.resize(m);
  row_keys_host_.resize(m);
  for (std::size_t s = 0; s < batch.segments.size(); ++s) {
    const Segment& seg = batch.segments[s];
    const std::uint64_t sample_key = mix64(static_cast<std::uint64_t>(batch.sample_ids[s]));
    for (Index t = 0; t < seg.length; ++t) {
      positions_host_[seg.begin + t] = static_cast<std::int32_t>(first_position + t);
      row_keys_host_[seg.begin + t] = hash_combine(sample_key, static_cast<std::uint64_t>(t));
    }
  }
  upload<std::int32_t>(device_, geometry_.tokens, batch.tokens);
  upload<std::int32_t>(device_, geometry_.positions, positions_host_);
  upload<std::uint64_t>(device_, geometry_.row_keys, row_keys_host_);
  rope_.ensure(first_position + batch.longest_segment());
}

template <class P>
template <class Pass>
auto LlamaModel<P>::with_device_lora(LoraSource<Act>& source, Pass&& pass) {
  if (device_.host_accessible() || !lora_) return pass(&source);
  DeviceLora<Act> mirror(device_, source, lora_spans_);
  return pass(&mirror);
}

template <class P>
typename P::Act* LlamaModel<P>::output_buffer(Act* host, Index n) {
  if (device_.host_accessible()) return host;
  return output_staging_.ensure(device_, static_cast<std::size_t>(n));
}

template <class P>
void LlamaModel<P>::finish_output(Act* host, Index n) {
  if (!device_.host_accessible())
    device_.copy_to_host(host, output_staging_.data(), static_cast<std::size_t>(n) * sizeof(Act));
}

template <class P>
void LlamaModel<P>::check_lora_size(std::size_t values, const char* what) const {
  if (lora_ && static_cast<Index>(values) != lora_->size())
    throw ShapeError(std::string("LoRA ") + what + " hold " + std::to_string(values) +
                     " values, the adapter layout needs " + std::to_string(lora_->size()));
}

template <class P>
WholeLora<typename P::Act> LlamaModel<P>::whole_lora(std::span<const Act> params) const {
  check_lora_size(params.size(), "parameters");
  return WholeLora<Act>(params, nullptr);
}

template <class P>
WholeLora<typename P::Act> LlamaModel<P>::whole_lora(std::span<const Act> params,
                                                     std::span<Act> grads) const {
  check_lora_size(params.size(), "parameters");
  check_lora_size(grads.size(), "gradients");
  return WholeLora<Act>(params, grads.data());
}

template <class P>
LoraBinding<typename P::Act> LlamaModel<P>::bind_lora(LoraSource<Act>* source, bool dropout,
                                                      const StepKey& key) const {
  LoraBinding<Act> binding;
  if (!lora_) return binding;
  binding.layout = lora_;
  binding.source = source;
  binding.dropout = dropout && lora_->config().dropout > 0;
  binding.dropout_key = hash_combine(key.seed, key.step);
  return binding;
}

template <class P>
typename LlamaModel<P>::AcquiredLora LlamaModel<P>::acquire_lora(const LoraBinding<Act>& lora,
                                                                 int layer, bool with_grads) {
  LoraBinding<Act> binding = lora;
  if (binding.source) binding.view = binding.source->acquire(layer, with_grads);
  return AcquiredLora{binding, layer, with_grads};
}

template <class P>
LayerContext<P> LlamaModel<P>::layer_context(int layer, const Weight* weights,
                                             const LoraBinding<Act>& lora) {
  return LayerContext<P>{rt_,     *kernels_, device_,   config(), host_weights_.layout(),
                         weights, layer,     geometry_, rope_,    options_,
                         lora,    workspace_};
}

template <class P>
typename P::Act* LlamaModel<P>::layer_input(int layer) {
  const Index slot = all_inputs_ ? layer : layer % 2;
  return inputs_.data() + slot * geometry_.rows * config().hidden_size;
}

template <class P>
void LlamaModel<P>::seal_layer_input(int layer) {
  if constexpr (std::is_same_v<Act, float>) {
    if (!options_.bf16_residual) return;
    const Index n = geometry_.rows * config().hidden_size;
    kernels_->round_to_bf16(layer_input(layer),
                            keep_bf16_inputs_ ? kept_inputs_.data() + layer * n : nullptr, n);
  }
}

template <class P>
void LlamaModel<P>::restore_layer_input(int layer) {
  if (!keep_bf16_inputs_) return;
  const Index n = geometry_.rows * config().hidden_size;
  kernels_->widen_bf16(layer_input(layer), kept_inputs_.data() + layer * n, n);
}

template <class P>
void LlamaModel<P>::run_layers(const Batch& batch, const LoraBinding<Act>& lora, bool keep_inputs,
                               std::span<const Recompute> levels) {
  const LlamaConfig& c = config();
  const Index M = geometry_.rows, D = c.hidden_size;
  const int L = static_cast<int>(c.num_layers);
  keep_bf16_inputs_ = keep_inputs && options_.bf16_residual;
  all_inputs_ = keep_inputs && !keep_bf16_inputs_;
  inputs_.ensure(device_, static_cast<std::size_t>((all_inputs_ ? L + 1 : 2) * M * D));
  if (keep_bf16_inputs_) kept_inputs_.ensure(device_, static_cast<std::size_t>((L + 1) * M * D));
  if (activations_.size() < levels.size()) activations_.resize(levels.size());
  {
    ProfilePart once(rt_.profiler(), StepPart::kOncePerStep);
    {  // tokens were validated in prepare()
      const auto embedding = acquire({Unit::kEmbedding});
      kernels_->embedding_forward(layer_input(0), geometry_.tokens.data(), embedding.data, M, D);
    }
    seal_layer_input(0);
  }
  for (int l = 0; l < L; ++l) {
    const auto unit = acquire({Unit::kLayer, l});
    const auto adapters = acquire_lora(lora, l, false);
    auto ctx = layer_context(l, unit.data, adapters.binding);
    const Recompute level = levels.empty() ? Recompute::kFull : levels[static_cast<std::size_t>(l)];
    auto& own = levels.empty() ? working_ : activations_[static_cast<std::size_t>(l)];
    if (keeps_own_activations(level)) {
      layer_forward<P>(ctx, layer_input(l + 1), layer_input(l), own,
                       {.mlp = level == Recompute::kNone});
    } else {
      layer_forward<P>(ctx, layer_input(l + 1), layer_input(l), working_,
                       {.mlp = level == Recompute::kAttentionMlp});
      swap_kept(working_, own, level);
    }
    if (l == options_.poison_layer_output && keep_inputs) {
      const Act nan = std::numeric_limits<Act>::quiet_NaN();
      device_.copy_to_device(layer_input(l + 1), &nan, sizeof(Act));
    }
    seal_layer_input(l + 1);
  }
}

template <class P>
void LlamaModel<P>::forward_logits(const Batch& batch, std::span<const Act> lora_params,
                                   Act* logits, bool last_only) {
  prepare(batch);
  weights().begin_schedule(schedule(false));
  auto source = whole_lora(lora_params);
  with_device_lora(source, [&](LoraSource<Act>* lora) {
    run_layers(batch, bind_lora(lora, false, {}), false, {});
  });
  const LlamaConfig& c = config();
  const Index D = c.hidden_size, V = c.vocab_size;
  head_rows_host_.clear();
  if (last_only)
    for (const auto& seg : batch.segments)
      head_rows_host_.push_back(static_cast<std::int32_t>(seg.begin + seg.length - 1));
  else
    for (Index i = 0; i < batch.size(); ++i)
      head_rows_host_.push_back(static_cast<std::int32_t>(i));
  const Index R = static_cast<Index>(head_rows_host_.size());
  upload<std::int32_t>(device_, head_row_ids_, head_rows_host_);
  head_rows_.ensure(device_, static_cast<std::size_t>(R * D));
  final_h_.ensure(device_, static_cast<std::size_t>(R * D));
  final_rstd_.ensure(device_, static_cast<std::size_t>(R));
  kernels_->gather_rows(head_rows_.data(), layer_input(static_cast<int>(c.num_layers)),
                        head_row_ids_.data(), R, D);
  {
    const auto norm = acquire({Unit::kFinalNorm});
    kernels_->rmsnorm_forward(final_h_.data(), final_rstd_.data(), head_rows_.data(), norm.data, R,
                              D, c.rms_norm_eps, nullptr);
  }
  const auto lm_head = acquire(lm_head_unit(c));
  Act* out = output_buffer(logits, R * V);
  kernels_->linear_forward(Mat<Act>::dense(out, R, V), final_h_.data(), lm_head.data, D, false);
  finish_output(logits, R * V);
}

template <class P>
KvCache<typename P::Act> LlamaModel<P>::make_cache(Index capacity) const {
  KvCache<Act> cache;
  cache.capacity = capacity;
  const auto elements = static_cast<std::size_t>(capacity * config().kv_dim());
  cache.layers.resize(static_cast<std::size_t>(config().num_layers));
  for (auto& layer : cache.layers) {
    layer.keys.ensure(device_, elements);
    layer.values.ensure(device_, elements);
  }
  return cache;
}

template <class P>
void LlamaModel<P>::forward_cached(std::span<const std::int32_t> tokens, KvCache<Act>& cache,
                                   std::span<const Act> lora_params, Act* last_logits) {
  const Index n = static_cast<Index>(tokens.size());
  if (cache.length + n > cache.capacity)
    throw ShapeError("generation context full: " + std::to_string(cache.length) + " cached + " +
                     std::to_string(n) + " new positions exceed the cache's " +
                     std::to_string(cache.capacity));
  Batch batch;
  batch.add_sequence({tokens.begin(), tokens.end()},
                     std::vector<std::int32_t>(tokens.size(), kIgnoreIndex), 0);
  prepare(batch, cache.length);
  weights().begin_schedule(schedule(false));
  auto source = whole_lora(lora_params);
  const LlamaConfig& c = config();
  const Index D = c.hidden_size;
  all_inputs_ = keep_bf16_inputs_ = false;
  inputs_.ensure(device_, static_cast<std::size_t>(2 * n * D));
  {
    const auto embedding = acquire({Unit::kEmbedding});
    kernels_->embedding_forward(layer_input(0), geometry_.tokens.data(), embedding.data, n, D);
  }
  seal_layer_input(0);
  with_device_lora(source, [&](LoraSource<Act>* lora_source) {
    const auto lora = bind_lora(lora_source, false, {});
    for (int l = 0; l < static_cast<int>(c.num_layers); ++l) {
      const auto unit = acquire({Unit::kLayer, l});
      const auto adapters = acquire_lora(lora, l, false);
      auto ctx = layer_context(l, unit.data, adapters.binding);
      ctx.cache = &cache.layers[static_cast<std::size_t>(l)];
      ctx.cached = cache.length;
      layer_forward<P>(ctx, layer_input(l + 1), layer_input(l), working_);
      seal_layer_input(l + 1);
    }
  });
  cache.length += n;
  const Act* last = layer_input(static_cast<int>(c.num_layers)) + (n - 1) * D;
  final_h_.ensure(device_, static_cast<std::size_t>(D));
  final_rstd_.ensure(device_, 1);
  {
    const auto norm = acquire({Unit::kFinalNorm});
    kernels_->rmsnorm_forward(final_h_.data(), final_rstd_.data(), last, norm.data, 1, D,
                              c.rms_norm_eps, nullptr);
  }
  const auto lm_head = acquire(lm_head_unit(c));
  Act* out = output_buffer(last_logits, c.vocab_size);
  kernels_->linear_forward(Mat<Act>::dense(out, 1, c.vocab_size), final_h_.data(), lm_head.data, D,
                           false);
  finish_output(last_logits, c.vocab_size);
}

template <class P>
double LlamaModel<P>::head_loss(const Batch& batch, double grad_scale, bool want_grad) {
  const LlamaConfig& c = config();
  const Index M = batch.size(), D = c.hidden_size, V = c.vocab_size;
  const Act* x = layer_input(static_cast<int>(c.num_layers));
  ProfilePart once(rt_.profiler(), StepPart::kOncePerStep);
  if (want_grad) {
    residual_grad_.ensure(device_, static_cast<std::size_t>(M * D));
    residual_grad_.zero();
  }
  const auto norm = acquire({Unit::kFinalNorm});
  const auto lm_head = acquire(lm_head_unit(c));
  // Only rows with a target reach the lm_head: masked prompt tokens cost nothing here.
  head_rows_host_.clear();
  head_targets_host_.clear();
  for (Index i = 0; i < M; ++i)
    if (batch.targets[i] != kIgnoreIndex) {
      head_rows_host_.push_back(static_cast<std::int32_t>(i));
      head_targets_host_.push_back(batch.targets[i]);
    }
  const Index R = static_cast<Index>(head_rows_host_.size());
  upload<std::int32_t>(device_, head_row_ids_, head_rows_host_);
  upload<std::int32_t>(device_, head_targets_, head_targets_host_);
  const Index chunk = std::max<Index>(1, std::min(options_.head_chunk_rows, R));
  head_rows_.ensure(device_, static_cast<std::size_t>(chunk * D));
  final_h_.ensure(device_, static_cast<std::size_t>(chunk * D));
  d_final_h_.ensure(device_, static_cast<std::size_t>(chunk * D));
  final_rstd_.ensure(device_, static_cast<std::size_t>(chunk));
  head_logits_.ensure(device_, static_cast<std::size_t>(chunk * V));
  Kernels<P>& k = *kernels_;
  double loss = 0;
  for (Index c0 = 0; c0 < R; c0 += chunk) {
    const Index n = std::min(chunk, R - c0);
    const std::int32_t* rows = head_row_ids_.data() + c0;
    k.gather_rows(head_rows_.data(), x, rows, n, D);
    k.rmsnorm_forward(final_h_.data(), final_rstd_.data(), head_rows_.data(), norm.data, n, D,
                      c.rms_norm_eps, nullptr);
    k.linear_forward(Mat<Act>::dense(head_logits_.data(), n, V), final_h_.data(), lm_head.data, D,
                     false);
    loss += k.cross_entropy(head_logits_.data(), head_targets_.data() + c0, n, V, grad_scale,
                            want_grad);
    if (!want_grad) continue;
    k.linear_backward_data(d_final_h_.data(), head_logits_.data(), lm_head.data, n, V, D);
    // d x rows = rmsnorm backward, written into final_h_ (free now), then scattered.
    k.rmsnorm_backward(final_h_.data(), d_final_h_.data(), head_rows_.data(), final_rstd_.data(),
                       norm.data, n, D, false);
    k.scatter_rows(residual_grad_.data(), final_h_.data(), rows, n, D);
  }
  return loss;
}

template <class P>
int LlamaModel<P>::locate_nonfinite() {
  const Index n = geometry_.rows * config().hidden_size;
  const int L = static_cast<int>(config().num_layers);
  for (int l = 0; l <= L; ++l)
    if ((keep_bf16_inputs_ ? kernels_->first_nonfinite(kept_inputs_.data() + l * n, n)
                           : kernels_->first_nonfinite(layer_input(l), n)) >= 0)
      return l;
  return L + 1;
}

template <class P>
double LlamaModel<P>::loss(const Batch& batch, std::span<const Act> lora_params) {
  auto source = whole_lora(lora_params);
  return loss(batch, source);
}

template <class P>
double LlamaModel<P>::loss(const Batch& batch, LoraSource<Act>& lora) {
  prepare(batch);
  weights().begin_schedule(schedule(false));
  with_device_lora(lora, [&](LoraSource<Act>* source) {
    run_layers(batch, bind_lora(source, false, {}), false, {});
  });
  return head_loss(batch, 0.0, false);
}

template <class P>
double LlamaModel<P>::forward_backward(const Batch& batch, std::span<const Act> lora_params,
                                       std::span<Act> lora_grads, double grad_scale,
                                       const StepKey& key) {
  auto source = whole_lora(lora_params, lora_grads);
  return forward_backward(batch, source, grad_scale, key);
}

template <class P>
double LlamaModel<P>::forward_backward(const Batch& batch, LoraSource<Act>& source,
                                       double grad_scale, const StepKey& key) {
  prepare(batch);
  return with_device_lora(source, [&](LoraSource<Act>* lora_source) {
    const auto lora = bind_lora(lora_source, true, key);
    plan_levels();
    weights().begin_schedule(schedule(true));
    run_layers(batch, lora, true, levels_);
    const double loss = head_loss(batch, grad_scale, true);
    nonfinite_site_ = std::isfinite(loss) ? -1 : locate_nonfinite();
    // The backward runs even so: under ZeRO-3 every rank must make the same passes.
    for (int l = static_cast<int>(config().num_layers) - 1; l >= 0; --l) {
      const auto unit = acquire({Unit::kLayer, l});
      auto adapters = acquire_lora(lora, l, true);
      auto ctx = layer_context(l, unit.data, adapters.binding);
      restore_layer_input(l);
      layer_backward_pass(ctx, l);
      adapters.finish();
    }
    return loss;
  });
}

template <class P>
void LlamaModel<P>::plan_levels() {
  const LlamaConfig& c = config();
  const auto L = static_cast<std::size_t>(c.num_layers);
  // Planned for the largest batch so far: buffers never shrink, so a smaller batch keeping more
  // layers would hold more than the budget (with the default budget, which scales with the
  // rows as the costs do, the plan is the same for every batch).
  planned_rows_ = std::max(planned_rows_, geometry_.rows);
  const auto rows = static_cast<double>(planned_rows_);
  levels_ = make_recompute_plan(options_.recompute, c, rows,
                                LoraZShape::of(lora_ ? &lora_->config() : nullptr), sizeof(Act),
                                options_.recompute_budget_bytes)
                .levels;
  // A layer whose level dropped (a larger batch than any before) gives back what it kept.
  activations_.resize(L);
  for (std::size_t l = 0; l < L; ++l) {
    if (keeps_own_activations(levels_[l])) {
      if (levels_[l] == Recompute::kSelective) activations_[l].gate_up.release();
      continue;
    }
    LayerActivations<Act> kept;
    swap_kept(kept, activations_[l], levels_[l]);
    activations_[l] = std::move(kept);
  }
}

template <class P>
void LlamaModel<P>::layer_backward_pass(LayerContext<P>& ctx, int layer) {
  const Recompute level = levels_[static_cast<std::size_t>(layer)];
  auto& own = activations_[static_cast<std::size_t>(layer)];
  const Act* x = layer_input(layer);
  if (keeps_own_activations(level)) {
    layer_backward<P>(ctx, residual_grad_.data(), x, own);
    return;
  }
  swap_kept(working_, own, level);  // the working set takes back what the layer kept
  const bool attention_reruns = level == Recompute::kFull;
  layer_forward<P>(ctx, nullptr, x, working_,
                   {.attention_ready = !attention_reruns,
                    .mlp_ready = level == Recompute::kAttentionMlp,
                    .lora_ready = true});
  layer_backward<P>(ctx, residual_grad_.data(), x, working_,
                    attention_reruns ? AttentionInputs::kLastForwards : AttentionInputs::kAny);
}

template <class P>
std::size_t LlamaModel<P>::saved_activation_bytes() const {
  std::size_t total = 0;
  auto add = [&](const LayerActivations<Act>& a) {
    for (const auto* b :
         {&a.rstd1, &a.h1, &a.qkv, &a.attn, &a.lse, &a.x2, &a.rstd2, &a.h2, &a.gate_up})
      total += b->bytes();
    for (const auto& z : a.lora_z) total += z.bytes();
  };
  for (const auto& a : activations_) add(a);
  add(working_);
  return total;
}

template class LlamaModel<Fp32Policy>;
template class LlamaModel<Bf16Policy>;
template class LlamaModel<Fp64Policy>;

}  // namespace zerolora
