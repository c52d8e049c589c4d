#include "model/llama_layer.hpp"

#include <algorithm>
#include <type_traits>

#include "core/error.hpp"
#include "core/precision.hpp"
#include "core/rng.hpp"

namespace zerolora {
namespace {

// Shapes of one layer's activations, from the config and the batch.
struct Dims {
  Index M, D, I, H, KV, hd, Qd, KVd, W3, window;
  explicit Dims(const LlamaConfig& c, Index rows)
      : M(rows),
        D(c.hidden_size),
        I(c.intermediate_size),
        H(c.num_heads),
        KV(c.num_kv_heads),
        hd(c.head_dim),
        Qd(c.q_dim()),
        KVd(c.kv_dim()),
        W3(c.q_dim() + 2 * c.kv_dim()),
        window(c.sliding_window) {}
  AttentionShape attention() const { return {H, KV, hd, window}; }
};

// Rows per MLP chunk: never more than the micro-batch has, so that the workspace's chunk buffers
// (allocated whole on a GPU) are not sized for 1024 rows when a step has fewer.
Index mlp_chunk(const ComputeOptions& options, Index rows) {
  return std::max<Index>(1, std::min(options.mlp_chunk_rows, rows));
}

template <class T>
T* grow(Device& device, DeviceBuffer<T>& buffer, Index count) {
  return buffer.ensure(device, static_cast<std::size_t>(count));
}

// The modules whose LoRA branches share their input: the attention norm's output, the MLP
// norm's.
constexpr LoraModule kQkvModules[3] = {LoraModule::kQ, LoraModule::kK, LoraModule::kV};
constexpr LoraModule kMlpInputModules[2] = {LoraModule::kGate, LoraModule::kUp};

template <class P>
class LayerOps {
 public:
  using Act = typename P::Act;
  using Weight = typename P::Weight;

  explicit LayerOps(LayerContext<P>& ctx) : ctx_(ctx), k_(ctx.kernels) {}

  const Weight* w(LayerTensor t) const { return ctx_.weights + ctx_.layout.offset(t); }

  void base_forward(Mat<Act> dst, GemmOperand<P> src, Index M, Index in, const Weight* weight) {
    ZL_CHECK(dst.rows == M);
    k_.linear_forward(dst, src, weight, in, false);
  }

  // dst (=) residual + src W^T: the residual stream's add folded into the projection.
  void base_forward_residual(Act* dst, const Act* residual, GemmOperand<P> src, Index M, Index out,
                             Index in, const Weight* weight) {
    k_.linear_forward_residual(Mat<Act>::dense(dst, M, out), residual, src, weight, in);
  }

  void base_backward(Act* diff_src, GemmOperand<P> diff_dst, Index M, Index out,
                     const Weight* weight, Index in) {
    k_.linear_backward_data(diff_src, diff_dst, weight, M, out, in);
  }

  // Where an op writes its output's rounding for the projection that takes it (kernels.hpp
  // GemmOperand): `count` values of a workspace buffer in the bf16 policy, none in the others.
  Weight* rounded(DeviceBuffer<bf16>& buffer, Index count) {
    if constexpr (std::is_same_v<Weight, bf16>)
      return grow(ctx_.device, buffer, count);
    else
      return nullptr;
  }

  const LoraAdapterSlots* adapter(LoraModule m) const {
    return ctx_.lora.layout ? ctx_.lora.layout->adapter(ctx_.layer, m) : nullptr;
  }

  DropoutMask dropout(LoraModule m, Index row_offset) const {
    DropoutMask mask;
    if (ctx_.lora.dropout) mask.p = ctx_.lora.layout->config().dropout;
    mask.key =
        hash_combine(hash_combine(ctx_.lora.dropout_key, static_cast<std::uint64_t>(ctx_.layer)),
                     static_cast<std::uint64_t>(m));
    mask.row_keys = ctx_.geometry.row_keys.data() + row_offset;
    return mask;
  }

  Index rank() const { return ctx_.lora.layout ? ctx_.lora.layout->config().rank : 0; }

  // Module m's z in acts from row `row` on; null where m has no adapter (nor a z buffer).
  Act* z(LayerActivations<Act>& acts, LoraModule m, Index row = 0) const {
    return adapter(m) ? acts.lora_z[static_cast<int>(m)].data() + row * rank() : nullptr;
  }

  // One module's LoRA branch, where it has an adapter (o, down: no other shares its input).
  void lora_forward_into(LoraModule m, Mat<Act> dst, Act* z, const Act* src, Index M, Index in,
                         Index row_offset) {
    lora_forward_shared({m}, {dst}, {z}, src, M, in, row_offset);
  }

  // The LoRA branches of modules that share the input src [M, in] (q, k, v; gate, up), those
  // with an adapter, in one call (kernels.hpp lora_forward_shared): module i adds to dst[i] and
  // keeps its z in z[i].
  template <std::size_t N>
  void lora_forward_shared(const LoraModule (&modules)[N], const Mat<Act> (&dst)[N],
                           Act* const (&z)[N], const Act* src, Index M, Index in,
                           Index row_offset) {
    typename Kernels<P>::LoraForwardBranch branches[N];
    std::size_t count = 0;
    for (std::size_t i = 0; i < N; ++i) {
      if (const auto* slots = adapter(modules[i]))
        branches[count++] = {dst[i], z[i], ctx_.lora.param(slots->a_offset),
                             ctx_.lora.param(slots->b_offset), dropout(modules[i], row_offset)};
    }
    if (count == 0) return;
    const auto& cfg = ctx_.lora.layout->config();
    k_.lora_forward_shared({branches, count}, Mat<const Act>::dense(src, M, in), cfg.rank,
                           cfg.scale());
  }

  // Their backward (kernels.hpp lora_backward_shared): module i's output gradient diff_dst[i],
  // its z in z[i]; diff_src [rows, in] takes their terms in the modules' order.
  template <std::size_t N>
  void lora_backward_shared(const LoraModule (&modules)[N], Mat<Act> diff_src,
                            const Mat<const Act> (&diff_dst)[N], const Act* const (&z)[N],
                            const Act* src, Index row_offset) {
    if (!ctx_.lora.view.grads) return;
    typename Kernels<P>::LoraBackwardBranch branches[N];
    std::size_t count = 0;
    for (std::size_t i = 0; i < N; ++i) {
      if (const auto* slots = adapter(modules[i]))
        branches[count++] = {ctx_.lora.grad(slots->a_offset),
                             ctx_.lora.grad(slots->b_offset),
                             diff_dst[i],
                             z[i],
                             ctx_.lora.param(slots->a_offset),
                             ctx_.lora.param(slots->b_offset),
                             dropout(modules[i], row_offset)};
    }
    if (count == 0) return;
    const auto& cfg = ctx_.lora.layout->config();
    k_.lora_backward_shared(diff_src, {branches, count},
                            Mat<const Act>::dense(src, diff_src.rows, diff_src.cols), cfg.rank,
                            cfg.scale());
  }

  // q's, k's and v's LoRA contractions (z[i], module i's; none where z_ready: made before),
  // their expansions left to the attention (kernels.hpp QkvLoraExpansions): false, and nothing
  // done, where none has an adapter.
  bool qkv_lora_for_attention(QkvLoraExpansions<Act>& lora, Act* const (&z)[3], const Act* src,
                              Index M, Index in, bool z_ready) {
    bool any = false;
    for (int i = 0; i < 3; ++i) {
      const auto* slots = adapter(kQkvModules[i]);
      if (!slots) continue;
      if (!z_ready) lora_project_into(kQkvModules[i], z[i], src, M, in, 0);
      lora.z[i] = z[i];
      lora.b[i] = ctx_.lora.param(slots->b_offset);
      any = true;
    }
    if (!any) return false;
    lora.rank = rank();
    lora.scale = ctx_.lora.layout->config().scale();
    return true;
  }

  // dst += s z B^T from a z made before (ForwardKeep::lora_ready): lora_forward's
  // second half, the same bits as the whole where z is the first half's.
  void lora_expand_into(LoraModule m, Mat<Act> dst, const Act* z) {
    const auto* slots = adapter(m);
    if (!slots) return;
    k_.lora_expand(dst, z, ctx_.lora.param(slots->b_offset), rank(),
                   ctx_.lora.layout->config().scale());
  }

  void lora_project_into(LoraModule m, Act* z, const Act* src, Index M, Index in,
                         Index row_offset) {
    const auto* slots = adapter(m);
    if (!slots) return;
    k_.lora_project(z, Mat<const Act>::dense(src, M, in), ctx_.lora.param(slots->a_offset), rank(),
                    dropout(m, row_offset));
  }

  void lora_backward_into(LoraModule m, Mat<Act> diff_src, Mat<const Act> diff_dst, const Act* z,
                          const Act* src, Index row_offset) {
    lora_backward_shared({m}, diff_src, {diff_dst}, {z}, src, row_offset);
  }

  // gate_up (=) [rows, 2I] = h2 Wgu^T + LoRA(gate, up); z_gate/z_up receive the LoRA z, or
  // (z_ready: the recompute's) hold them already, made by the forward. h2_rounded: h2's
  // rounding where the norm made it, else null.
  void gate_up_forward(Act* gate_up, const Act* h2, const Weight* h2_rounded, Index rows,
                       Index row_offset, Act* z_gate, Act* z_up, bool z_ready, const Dims& d) {
    base_forward(Mat<Act>::dense(gate_up, rows, 2 * d.I), {h2, h2_rounded}, rows, d.D,
                 w(LayerTensor::kGate));
    const Mat<Act> gate{gate_up, rows, d.I, 2 * d.I, 1}, up{gate_up + d.I, rows, d.I, 2 * d.I, 1};
    if (z_ready) {
      lora_expand_into(LoraModule::kGate, gate, z_gate);
      lora_expand_into(LoraModule::kUp, up, z_up);
    } else {
      lora_forward_shared(kMlpInputModules, {gate, up}, {z_gate, z_up}, h2, rows, d.D, row_offset);
    }
  }

 private:
  LayerContext<P>& ctx_;
  Kernels<P>& k_;
};

// The adapted modules' z, kept from the forward, must already fit (growing their buffers would
// discard them).
template <class P>
void check_lora_z(const LayerOps<P>& ops, const LayerActivations<typename P::Act>& acts, Index M) {
  for (int m = 0; m < kLoraModuleCount; ++m)
    if (ops.adapter(static_cast<LoraModule>(m)))
      ZL_CHECK(acts.lora_z[m].size() >= static_cast<std::size_t>(M * ops.rank()));
}

}  // namespace

template <class P>
void layer_forward(LayerContext<P>& ctx, typename P::Act* out, const typename P::Act* x,
                   LayerActivations<typename P::Act>& acts, ForwardKeep keep) {
  using Act = typename P::Act;
  using Weight = typename P::Weight;
  LayerOps<P> ops(ctx);
  Kernels<P>& k = ctx.kernels;
  Device& dev = ctx.device;
  const LlamaConfig& c = ctx.config;
  const Dims d(c, ctx.geometry.rows);
  const Index M = d.M, r = ops.rank();
  const std::int32_t* positions = ctx.geometry.positions.data();

  // Kept outputs must already fit: growing their buffers would discard them.
  if (keep.attention_ready)
    ZL_CHECK(acts.attn.size() >= static_cast<std::size_t>(M * d.Qd) &&
             acts.lse.size() >= static_cast<std::size_t>(d.H * M));
  if (keep.mlp_ready)
    ZL_CHECK(!out && acts.gate_up.size() >= static_cast<std::size_t>(M * 2 * d.I));
  const bool z_ready = keep.lora_ready;  // the recompute's (its MLP does not run)
  ZL_CHECK(!z_ready || !out);
  if (z_ready) check_lora_z(ops, acts, M);
  Act* rstd1 = grow(dev, acts.rstd1, M);       // [M]
  Act* h1 = grow(dev, acts.h1, M * d.D);       // [M, D]
  Act* qkv = grow(dev, acts.qkv, M * d.W3);    // [M, Qd + 2 KVd], q and k rotated
  Act* attn = grow(dev, acts.attn, M * d.Qd);  // [M, Qd]
  Act* lse = grow(dev, acts.lse, d.H * M);     // [H, M]
  Act* x2 = grow(dev, acts.x2, M * d.D);       // [M, D] residual after attention
  Act* rstd2 = grow(dev, acts.rstd2, M);       // [M]
  Act* h2 = grow(dev, acts.h2, M * d.D);       // [M, D]
  for (int m = 0; m < kLoraModuleCount; ++m)
    if (ops.adapter(static_cast<LoraModule>(m))) grow(dev, acts.lora_z[m], M * r);

  // Attention block.
  auto& ws = ctx.workspace;
  Weight* h1_rounded = ops.rounded(ws.h_rounded, M * d.D);
  k.rmsnorm_forward(h1, rstd1, x, ops.w(LayerTensor::kAttnNorm), M, d.D, c.rms_norm_eps,
                    h1_rounded);
  ops.base_forward(Mat<Act>::dense(qkv, M, d.W3), {h1, h1_rounded}, M, d.D, ops.w(LayerTensor::kQ));
  // Qwen2's biases belong to the base projection, before LoRA adds to it (as in PEFT).
  if (c.qkv_bias) k.linear_add_bias(Mat<Act>::dense(qkv, M, d.W3), ops.w(LayerTensor::kQBias));
  const AttentionShape shape = d.attention();
  Mat<Act> qkv_columns[3];
  Act* qkv_z[3];
  for (int i = 0; i < 3; ++i) {
    qkv_columns[i] = qkv_branch_columns(qkv, i, M, shape);
    qkv_z[i] = ops.z(acts, kQkvModules[i]);
  }
  // q/k/v's LoRA branches, then RoPE on q's heads and k's (consecutive in the fused row): their
  // last passes by the attention where it runs here (a GPU does them as it copies q/k/v for
  // cuDNN), else by themselves (the cache takes rotated keys; the backward reads q and k
  // rotated).
  const RopeRotation rotation{positions, &ctx.rope};
  const bool attention_runs = !ctx.cache && !keep.attention_ready;
  QkvLoraExpansions<Act> qkv_lora;
  const bool lora_in_attention =
      attention_runs && ops.qkv_lora_for_attention(qkv_lora, qkv_z, h1, M, d.D, z_ready);
  if (!attention_runs) {
    if (z_ready) {
      for (int i = 0; i < 3; ++i) ops.lora_expand_into(kQkvModules[i], qkv_columns[i], qkv_z[i]);
    } else {
      ops.lora_forward_shared(kQkvModules, qkv_columns, qkv_z, h1, M, d.D, 0);
    }
    k.rope_rotate_qk(qkv, rotation, M, d.attention(), false);
  }
  Weight* attn_rounded = nullptr;  // made only where the attention runs here
  if (ctx.cache) {                 // generation: extend the cache, attend over everything cached
    Act* keys = ctx.cache->keys.data() + ctx.cached * d.KVd;
    Act* values = ctx.cache->values.data() + ctx.cached * d.KVd;
    const std::size_t row = static_cast<std::size_t>(d.KVd) * sizeof(Act);
    const std::size_t pitch = static_cast<std::size_t>(d.W3) * sizeof(Act);
    dev.copy_rows(keys, row, qkv + d.Qd, pitch, row, static_cast<std::size_t>(M));
    dev.copy_rows(values, row, qkv + d.Qd + d.KVd, pitch, row, static_cast<std::size_t>(M));
    k.attention_cached(attn, qkv, d.W3, ctx.cache->keys.data(), ctx.cache->values.data(),
                       ctx.cached, M, d.attention());
  } else if (attention_runs) {
    attn_rounded = ops.rounded(ws.attn_rounded, M * d.Qd);
    k.attention_forward(attn, attn_rounded, lse, qkv, *ctx.geometry.segments, M, d.attention(),
                        ctx.options.attention, lora_in_attention ? &qkv_lora : nullptr, &rotation);
  }
  ops.base_forward_residual(x2, x, {attn, attn_rounded}, M, d.D, d.Qd, ops.w(LayerTensor::kO));
  Act* z_o = ops.z(acts, LoraModule::kO);
  if (z_ready)
    ops.lora_expand_into(LoraModule::kO, Mat<Act>::dense(x2, M, d.D), z_o);
  else
    ops.lora_forward_into(LoraModule::kO, Mat<Act>::dense(x2, M, d.D), z_o, attn, M, d.Qd, 0);
  const bool save_mlp = keep.mlp;
  const bool mlp_runs = save_mlp || out;  // else h2 is kept for the backward's recompute only
  Weight* h2_rounded = mlp_runs ? ops.rounded(ws.h_rounded, M * d.D) : nullptr;
  k.rmsnorm_forward(h2, rstd2, x2, ops.w(LayerTensor::kMlpNorm), M, d.D, c.rms_norm_eps,
                    h2_rounded);

  // MLP block, by row chunks.
  acts.mlp_saved = save_mlp || keep.mlp_ready;
  if (!mlp_runs) return;
  const Index chunk = mlp_chunk(ctx.options, M);
  if (save_mlp) grow(dev, acts.gate_up, M * 2 * d.I);
  for (Index c0 = 0; c0 < M; c0 += chunk) {
    const Index rows = std::min(chunk, M - c0);
    auto z = [&](LoraModule m) { return ops.z(acts, m, c0); };
    Act* gate_up =
        save_mlp ? acts.gate_up.data() + c0 * 2 * d.I : grow(dev, ws.gate_up, chunk * 2 * d.I);
    ops.gate_up_forward(gate_up, h2 + c0 * d.D, h2_rounded ? h2_rounded + c0 * d.D : nullptr, rows,
                        c0, z(LoraModule::kGate), z(LoraModule::kUp), false, d);
    if (!out) continue;
    Weight* act_rounded = ops.rounded(ws.act_rounded, chunk * d.I);
    // The fp32 values (and their buffer) only for down's LoRA branch; the projection reads the
    // rounding.
    const bool act_values = ops.adapter(LoraModule::kDown) || !act_rounded;
    Act* act = act_values ? grow(dev, ws.act, chunk * d.I) : nullptr;
    k.swiglu_forward(act, gate_up, rows, d.I, act_rounded);
    Act* out_rows = out + c0 * d.D;
    ops.base_forward_residual(out_rows, x2 + c0 * d.D, {act, act_rounded}, rows, d.D, d.I,
                              ops.w(LayerTensor::kDown));
    ops.lora_forward_into(LoraModule::kDown, Mat<Act>::dense(out_rows, rows, d.D),
                          z(LoraModule::kDown), act, rows, d.I, c0);
  }
}

template <class P>
void layer_backward(LayerContext<P>& ctx, typename P::Act* dx, const typename P::Act* x,
                    LayerActivations<typename P::Act>& acts, AttentionInputs attention_inputs) {
  using Act = typename P::Act;
  using Weight = typename P::Weight;
  LayerOps<P> ops(ctx);
  Kernels<P>& k = ctx.kernels;
  Device& dev = ctx.device;
  const LlamaConfig& c = ctx.config;
  const Dims d(c, ctx.geometry.rows);
  const Index M = d.M;
  auto& ws = ctx.workspace;
  const std::int32_t* positions = ctx.geometry.positions.data();
  check_lora_z(ops, acts, M);  // the forward's (training's first, which ran every module)

  // MLP block, by row chunks: dx rows become d(x2) rows.
  const Index chunk = mlp_chunk(ctx.options, M);
  for (Index c0 = 0; c0 < M; c0 += chunk) {
    const Index rows = std::min(chunk, M - c0);
    const Act* h2 = acts.h2.data() + c0 * d.D;
    auto z = [&](LoraModule m) { return ops.z(acts, m, c0); };
    Act* gate_up = nullptr;
    if (acts.mlp_saved) {
      gate_up = acts.gate_up.data() + c0 * 2 * d.I;
    } else {  // recompute: the base projection, and the LoRA expansions of the forward's z
      gate_up = grow(dev, ws.gate_up, chunk * 2 * d.I);
      ops.gate_up_forward(gate_up, h2, nullptr, rows, c0, z(LoraModule::kGate), z(LoraModule::kUp),
                          true, d);
    }
    Act* dx_rows = dx + c0 * d.D;
    Act* d_act = grow(dev, ws.d_act, chunk * d.I);
    ops.base_backward(d_act, dx_rows, rows, d.D, ops.w(LayerTensor::kDown), d.I);
    if (ops.adapter(LoraModule::kDown)) {
      Act* act = grow(dev, ws.act, chunk * d.I);
      k.swiglu_forward(act, gate_up, rows, d.I, nullptr);  // for the LoRA branch: fp32 only
      ops.lora_backward_into(LoraModule::kDown, Mat<Act>::dense(d_act, rows, d.I),
                             Mat<const Act>::dense(dx_rows, rows, d.D), z(LoraModule::kDown), act,
                             c0);
    }
    Weight* d_gate_up_rounded = ops.rounded(ws.d_gate_up_rounded, chunk * 2 * d.I);
    // The fp32 gradient (and its buffer) only for gate's and up's LoRA branches, as in the
    // forward.
    const bool gate_up_values =
        ops.adapter(LoraModule::kGate) || ops.adapter(LoraModule::kUp) || !d_gate_up_rounded;
    Act* d_gate_up = gate_up_values ? grow(dev, ws.d_gate_up, chunk * 2 * d.I) : nullptr;
    k.swiglu_backward(d_gate_up, d_act, gate_up, rows, d.I, d_gate_up_rounded);
    Act* dh = grow(dev, ws.dh, std::max(chunk, M) * d.D);
    ops.base_backward(dh, {d_gate_up, d_gate_up_rounded}, rows, 2 * d.I, ops.w(LayerTensor::kGate),
                      d.D);
    ops.lora_backward_shared(kMlpInputModules, Mat<Act>::dense(dh, rows, d.D),
                             {Mat<const Act>{d_gate_up, rows, d.I, 2 * d.I, 1},
                              Mat<const Act>{d_gate_up + d.I, rows, d.I, 2 * d.I, 1}},
                             {z(LoraModule::kGate), z(LoraModule::kUp)}, h2, c0);
    k.rmsnorm_backward(dx_rows, dh, acts.x2.data() + c0 * d.D, acts.rstd2.data() + c0,
                       ops.w(LayerTensor::kMlpNorm), rows, d.D, true);
  }

  // Attention block: dx becomes d(x).
  Act* d_attn = grow(dev, ws.d_attn, M * d.Qd);
  ops.base_backward(d_attn, dx, M, d.D, ops.w(LayerTensor::kO), d.Qd);
  ops.lora_backward_into(LoraModule::kO, Mat<Act>::dense(d_attn, M, d.Qd),
                         Mat<const Act>::dense(dx, M, d.D), ops.z(acts, LoraModule::kO),
                         acts.attn.data(), 0);
  // d(q/k/v) before RoPE rotated q and k, and its rounding for the projection (in the norms'
  // buffer: their copies are spent by now).
  Act* d_qkv = grow(dev, ws.d_qkv, M * d.W3);
  Weight* d_qkv_rounded = ops.rounded(ws.h_rounded, M * d.W3);
  const RopeRotation rotation{positions, &ctx.rope};
  k.attention_backward(d_qkv, d_qkv_rounded, d_attn, acts.qkv.data(), acts.attn.data(),
                       acts.lse.data(), *ctx.geometry.segments, M, d.attention(),
                       ctx.options.attention, &rotation, attention_inputs);
  Act* dh = grow(dev, ws.dh, M * d.D);
  ops.base_backward(dh, {d_qkv, d_qkv_rounded}, M, d.W3, ops.w(LayerTensor::kQ), d.D);
  const AttentionShape shape = d.attention();
  Mat<const Act> d_qkv_columns[3];
  const Act* qkv_z[3];
  for (int i = 0; i < 3; ++i) {
    d_qkv_columns[i] = qkv_branch_columns<const Act>(d_qkv, i, M, shape);
    qkv_z[i] = ops.z(acts, kQkvModules[i]);
  }
  ops.lora_backward_shared(kQkvModules, Mat<Act>::dense(dh, M, d.D), d_qkv_columns, qkv_z,
                           acts.h1.data(), 0);
  k.rmsnorm_backward(dx, dh, x, acts.rstd1.data(), ops.w(LayerTensor::kAttnNorm), M, d.D, true);
}

#define ZL_INSTANTIATE_LAYER(P)                                             \
  template void layer_forward<P>(LayerContext<P>&, P::Act*, const P::Act*,  \
                                 LayerActivations<P::Act>&, ForwardKeep);   \
  template void layer_backward<P>(LayerContext<P>&, P::Act*, const P::Act*, \
                                  LayerActivations<P::Act>&, AttentionInputs);
ZL_INSTANTIATE_LAYER(Fp32Policy)
ZL_INSTANTIATE_LAYER(Bf16Policy)
ZL_INSTANTIATE_LAYER(Fp64Policy)
#undef ZL_INSTANTIATE_LAYER

}  // namespace zerolora
