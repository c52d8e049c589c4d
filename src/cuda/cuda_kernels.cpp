#include "cuda/cuda_kernels.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "core/error.hpp"
#include "core/precision.hpp"
#include "cuda/attention_geometry.hpp"
#include "cuda/cuda_device.hpp"
#include "cuda/cuda_lora.hpp"
#include "cuda/cuda_ops.hpp"
#include "cuda/gemm.hpp"
#include "ops/attention.hpp"
#include "ops/cudnn_plan.hpp"
#ifdef ZEROLORA_CUDNN
#include "cuda/cudnn_attention.hpp"
#endif

namespace zerolora::cuda {

namespace {

constexpr Index kMaxHeadDim = 256;

template <class W>
auto bits(const W* p) {
  if constexpr (std::is_same_v<W, bf16>)
    return reinterpret_cast<const Bf16Bits*>(p);
  else
    return p;
}

template <class P>
class CudaKernels final : public Kernels<P> {
 public:
  using Act = typename P::Act;
  using Weight = typename P::Weight;
  static_assert(std::is_same_v<Act, float>, "the CUDA backend computes activations in fp32");

  // Each op is a profiler scope (a GPU clock times it where one is set: core/profiler.hpp).
  CudaKernels(CudaDevice& device, Profiler& profiler)
      : device_(device),
        profiler_(profiler),
        s_(device.stream()),
        gemm_(device, device.stream()),
        lora_(device, gemm_) {}

  void embedding_forward(Act* dst, const std::int32_t* tokens, const Weight* table, Index M,
                         Index D) override {
    ProfileScope profile(profiler_, ProfileCategory::kOther);
    cuda::embedding_forward(s_, dst, tokens, bits(table), M, D);
  }
  void rmsnorm_forward(Act* dst, Act* rstd, const Act* src, const Weight* weight, Index M, Index D,
                       double eps, Weight* rounded) override {
    ProfileScope profile(profiler_, ProfileCategory::kNorm);
    cuda::rmsnorm_forward(s_, dst, rstd, src, bits(weight), M, D, static_cast<float>(eps),
                          rounded_bits(rounded));
  }
  void rmsnorm_backward(Act* diff_src, const Act* diff_dst, const Act* src, const Act* rstd,
                        const Weight* weight, Index M, Index D, bool accumulate) override {
    ProfileScope profile(profiler_, ProfileCategory::kNorm);
    cuda::rmsnorm_backward(s_, diff_src, diff_dst, src, rstd, bits(weight), M, D, accumulate);
  }
  void rope_rotate(Act* x, const std::int32_t* positions, const RopeTable& table, Index M,
                   Index row_stride, Index heads, bool inverse) override {
    ProfileScope profile(profiler_, ProfileCategory::kRope);
    upload_rope(table);
    cuda::rope_rotate(s_, x, positions, rope_cos_.data(), rope_sin_.data(), table.half(), M,
                      row_stride, heads, inverse);
  }
  void swiglu_forward(Act* dst, const Act* gate_up, Index M, Index I, Weight* rounded) override {
    ProfileScope profile(profiler_, ProfileCategory::kSwiglu);
    cuda::swiglu_forward(s_, dst, gate_up, M, I, rounded_bits(rounded));
  }
  void swiglu_backward(Act* diff_gate_up, const Act* diff_dst, const Act* gate_up, Index M, Index I,
                       Weight* rounded) override {
    ProfileScope profile(profiler_, ProfileCategory::kSwiglu);
    cuda::swiglu_backward(s_, diff_gate_up, diff_dst, gate_up, M, I, rounded_bits(rounded));
  }
  double cross_entropy(Act* logits, const std::int32_t* targets, Index R, Index V,
                       double grad_scale, bool write_grad) override {
    ProfileScope profile(profiler_, ProfileCategory::kLoss);
    if (R == 0) return 0.0;
    row_loss_.ensure(device_, static_cast<std::size_t>(R));
    cuda::cross_entropy(s_, logits, targets, row_loss_.data(), R, V, static_cast<float>(grad_scale),
                        write_grad);
    row_loss_host_.resize(static_cast<std::size_t>(R));
    device_.copy_to_host(row_loss_host_.data(), row_loss_.data(), R * sizeof(double));
    double total = 0;
    for (double v : row_loss_host_) total += v;
    return total;
  }

  void linear_forward(Mat<Act> dst, GemmOperand<P> src, const Weight* weight, Index in,
                      bool accumulate) override {
    const Index M = dst.rows, out = dst.cols;
    const Mat<const Weight> a = operand(src, M, in);
    ProfileScope profile(profiler_, ProfileCategory::kMatmul);
    gemm_.matmul(a, Mat<const Weight>::dense(weight, out, in).t(), dst, 1.0f, accumulate);
  }
  void linear_forward_residual(Mat<Act> dst, const Act* residual, GemmOperand<P> src,
                               const Weight* weight, Index in) override {
    check_residual_operands(dst, residual);
    const Index M = dst.rows, out = dst.cols;
    const Mat<const Weight> a = operand(src, M, in);
    ProfileScope profile(profiler_, ProfileCategory::kMatmul);
    gemm_.matmul(a, Mat<const Weight>::dense(weight, out, in).t(), dst, 1.0f, true, residual);
  }
  void linear_add_bias(Mat<Act> dst, const Weight* bias) override {
    ProfileScope profile(profiler_, ProfileCategory::kMatmul);
    ZL_CHECK(dst.cs == 1);  // the kernel walks a row's columns contiguously
    cuda::add_bias(s_, dst.data, dst.rs, bits(bias), dst.rows, dst.cols);
  }
  void linear_backward_data(Act* diff_src, GemmOperand<P> diff_dst, const Weight* weight, Index M,
                            Index out, Index in) override {
    const Mat<const Weight> a = operand(diff_dst, M, out);
    ProfileScope profile(profiler_, ProfileCategory::kMatmul);
    gemm_.matmul(a, Mat<const Weight>::dense(weight, out, in), Mat<Act>::dense(diff_src, M, in),
                 1.0f, false);
  }

  // The LoRA branch: cuda_lora.hpp (the same in both policies: fp32 activations).
  void lora_project(Act* z, Mat<const Act> src, const Act* a, Index rank,
                    const DropoutMask& dropout) override {
    ProfileScope profile(profiler_, ProfileCategory::kLora);
    lora_.project(z, src, a, rank, dropout);
  }
  void lora_forward(Mat<Act> dst, Act* z, Mat<const Act> src, const Act* a, const Act* b,
                    Index rank, double scale, const DropoutMask& dropout) override {
    ProfileScope profile(profiler_, ProfileCategory::kLora);
    lora_.forward(dst, z, src, a, b, rank, scale, dropout);
  }
  void lora_expand(Mat<Act> dst, const Act* z, const Act* b, Index rank, double scale) override {
    ProfileScope profile(profiler_, ProfileCategory::kLora);
    lora_.expand(dst, z, b, rank, scale);
  }
  void lora_backward(Mat<Act> diff_src, Act* diff_a, Act* diff_b, Mat<const Act> diff_dst,
                     const Act* z, Mat<const Act> src, const Act* a, const Act* b, Index rank,
                     double scale, const DropoutMask& dropout) override {
    ProfileScope profile(profiler_, ProfileCategory::kLora);
    lora_.backward(diff_src, diff_a, diff_b, diff_dst, z, src, a, b, rank, scale, dropout);
  }
  // Branches that share their input (q, k and v): their backward as one group of lora.cu's
  // kernels (one profiled call) where CudaLora takes them as one, else the default's calls one
  // by one. Their forward runs one by one (the default's): the grouped contraction was slower
  // than three single ones on an H100 (bench_kernels, 2026-12-06: 722 against 609 us at the 7B
  // shape), where the grouped backward was faster (1055 against 1175 us, before its dA and dx
  // became one pass: lora.cu's lora_outer_expand, not yet timed on a GPU). (Where the attention
  // runs, the layer gives it q's, k's and v's expansions instead: attention_forward.)
  using typename Kernels<P>::LoraBackwardBranch;
  void lora_backward_shared(Mat<Act> diff_src, std::span<const LoraBackwardBranch> branches,
                            Mat<const Act> src, Index rank, double scale) override {
    if (!CudaLora::groups_backward(diff_src, branches, src, rank))
      return Kernels<P>::lora_backward_shared(diff_src, branches, src, rank, scale);
    ProfileScope profile(profiler_, ProfileCategory::kLora);
    lora_.backward_group(diff_src, branches, src, rank, scale);
  }

  // The bf16 policy uses cuDNN's fused attention where it takes the shape (bf16 in and out:
  // q, k, v rounded once, O and dQKV come back as bf16 values), the fp32 policy and whatever
  // cuDNN refuses the reference kernel; a shape takes one path for both passes, so the
  // statistics (lse) always have the layout the other pass expects.
  // --attn_softmax_bf16 (scores and probabilities rounded to bf16, a parity study of the seed's
  // flag) is implemented on the CPU only: refused rather than silently computed without it.
  static void check_options(const AttentionOptions& options) {
    if (options.softmax_bf16)
      throw UnsupportedError(
          "--attn_softmax_bf16 is implemented on the CPU only: use --device cpu, or leave it off");
  }
  // The reference kernel rounds its operands to bf16 where the CPU kernel for this shape does:
  // the tiled one (large heads) rounds its GEMM operands, the direct one (small heads) computes
  // in fp32 (ops/attention.hpp, attention_uses_direct).
  static bool round_operands(const AttentionShape& shape, const AttentionOptions& options) {
    return kRoundOperands && !attention_uses_direct(shape, options);
  }

  std::vector<std::string> take_notes() override { return std::exchange(notes_, {}); }
  void note_once(const std::string& line) {
    if (noted_.insert(line).second) notes_.push_back(line);
  }
  // Which attention a forward ran, once per path and reason: the reference kernel runs on the
  // CUDA cores in fp32, far slower than cuDNN's on the tensor cores (its first, a warp per
  // query row, did not finish the 7B step at 2048 tokens in 60 s on an H200; the tiled one
  // since ran on an H100 in the correctness tests, its speed there not measured).
  void note_attention(bool cudnn, const AttentionShape& shape, const AttentionOptions& options) {
    // The line is built only when what it depends on changes, not every forward.
    std::size_t refusals = 0;
#ifdef ZEROLORA_CUDNN
    if (cudnn_) refusals = cudnn_->refusals().size();
#endif
    const AttentionNoteInputs inputs{cudnn, shape.head_dim, options.fused, refusals};
    if (attention_noted_ == inputs) return;
    attention_noted_ = inputs;
#ifdef ZEROLORA_CUDNN
    if (cudnn) {
      note_once("attention: cuDNN's fused attention, its " +
                std::string(cudnn_backward_name(cudnn_->backward_algorithm())) +
                " backward (a call's dP workspace at most " +
                std::to_string(static_cast<long long>(cudnn_->dp_workspace_cap() / 1048576.0)) +
                " MiB: ZEROLORA_CUDNN_DP_WORKSPACE_MIB)");
      return;
    }
#endif
    std::string why;
    if (!kRoundOperands) {
      why = "fp32 mode; cuDNN's is bf16 only";
    } else if (!options.fused) {
      why = "fused attention off";
    } else if (!cudnn_supports_head_dim(shape.head_dim)) {
      why = "cuDNN takes head sizes that are multiples of 8 up to 256, not " +
            std::to_string(shape.head_dim) + "; far slower than cuDNN's";
    } else {
#ifdef ZEROLORA_CUDNN
      why = "cuDNN refused " +
            (cudnn_ && !cudnn_->refusals().empty() ? cudnn_->refusals().back()
                                                   : std::string("the shape")) +
            "; far slower than cuDNN's";
#else
      why = "this build has no cuDNN; far slower than cuDNN's";
#endif
    }
    note_once("attention: the GPU's reference kernel (" + why + ")");
  }

  void attention_forward(Act* out, Weight* out_rounded, Act* lse, Act* qkv,
                         const std::vector<Segment>& segments, Index M, const AttentionShape& shape,
                         const AttentionOptions& options, const QkvLoraExpansions<Act>* lora,
                         const RopeRotation* rotate) override {
    check_options(options);
    if (rotate) check_rope_heads(*rotate->table, shape);
    const Index width = shape.heads * shape.head_dim;
#ifdef ZEROLORA_CUDNN
    copies_held_ = {};  // until this forward has filled cuDNN's buffers
    const bool cudnn = use_cudnn(segments, M, shape, options);
    note_attention(cudnn, shape, options);
    if (cudnn) {
      // Timed apart: cuDNN's kernel as attention, the copies into and out of its layout as
      // convert (so that a profile tells how fast cuDNN itself runs).
      const Bf16Bits* qkv16 = nullptr;
      Bf16Bits* out16 = nullptr;
      float* stats = nullptr;
      // LoRA's expansions (up to rank 8) and RoPE as q/k/v are copied: one pass.
      const bool fuse_lora = lora && rotate && lora->rank <= cuda::kQkvExpansionsMaxRank;
      if (lora && !fuse_lora) this->lora_expand_qkv(qkv, *lora, M, shape);
      {  // (the padded buffers' zeroed padding rows, and RoPE and LoRA's expansions, included)
        ProfileScope profile(profiler_, ProfileCategory::kConvert);
        out16 = bits_of(out_bf16_, M, width);
        stats = padded_stats(M, shape.heads);
        if (rotate) {
          const Index w_qkv = shape.qkv_stride();
          auto* rounded = reinterpret_cast<Bf16Bits*>(zero_padded(qkv_bf16_, M, w_qkv));
          upload_rope(*rotate->table);
          cuda::rotate_round(
              s_, {qkv, rounded, w_qkv, M, shape.heads, shape.kv_heads, shape.head_dim / 2,
                   rotate->positions, rope_cos_.data(), rope_sin_.data(),
                   fuse_lora ? expansions(*lora) : cuda::QkvExpansions {}});
          qkv16 = rounded;
        } else {
          qkv16 = bf16_copy(qkv_bf16_, qkv, M, shape.qkv_stride());
        }
      }
      {
        ProfileScope profile(profiler_, ProfileCategory::kAttention);
        cudnn_->forward(out16, stats, qkv16, segments, M, shape);
      }
      ProfileScope profile(profiler_, ProfileCategory::kConvert);
      // O is bf16 values: its rounding is cuDNN's output itself, copied as it is widened.
      cuda::widen_bf16(s_, out, out16, M * width, rounded_bits(out_rounded));
      device_.copy(lse, stats, static_cast<std::size_t>(M * shape.heads) * sizeof(float));
      copies_held_ = {qkv, out, lse, M, shape};
      return;
    }
#else
    note_attention(false, shape, options);
#endif
    if (lora) this->lora_expand_qkv(qkv, *lora, M, shape);
    if (rotate) this->rope_rotate_qk(qkv, *rotate, M, shape, false);
    ProfileScope profile(profiler_, ProfileCategory::kAttention);
    cuda::attention_forward(s_, out, lse, qkv, geometry(segments, M, shape),
                            round_operands(shape, options));
    if (out_rounded) cuda::to_bf16(s_, rounded_bits(out_rounded), out, M * width);
  }
  void attention_backward(Act* diff_qkv, Weight* diff_qkv_rounded, const Act* diff_out,
                          const Act* qkv, const Act* out, const Act* lse,
                          const std::vector<Segment>& segments, Index M,
                          const AttentionShape& shape, const AttentionOptions& options,
                          const RopeRotation* rotated, AttentionInputs from) override {
    check_options(options);
    if (rotated) check_rope_heads(*rotated->table, shape);
#ifdef ZEROLORA_CUDNN
    if (use_cudnn(segments, M, shape, options)) {
      // Timed apart as in the forward: cuDNN as attention, the layout's copies as convert.
      const Index w_out = shape.heads * shape.head_dim, w_qkv = shape.qkv_stride();
      // cuDNN's gradients come dense (cudnn_attention.hpp): dQ, dK, dV one after another in
      // one buffer, each padded like the others, then widened into the fused layout's columns;
      // or (the atomic backward) already in the fused layout, widened in one pass.
      const Index w_kv = shape.kv_heads * shape.head_dim, rows = cudnn_padded_rows(M);
      const bool fused = cuda::fused_gradients(cudnn_->backward_algorithm());
      Bf16Bits *dq16 = nullptr, *dk16 = nullptr, *dv16 = nullptr;
      float* stats = nullptr;
      const Bf16Bits *qkv16 = nullptr, *out16 = nullptr, *dout16 = nullptr;
      {  // (the padded buffers' zeroed padding rows included)
        ProfileScope profile(profiler_, ProfileCategory::kConvert);
        dq16 = bits_of(dqkv_bf16_, M, w_qkv);
        dk16 = dq16 + (fused ? w_out : rows * w_out);
        dv16 = dk16 + (fused ? w_kv : rows * w_kv);
        if (holds_copies_of(from, qkv, out, lse, M, shape)) {
          // The forward's copies of q/k/v, O and the statistics are still in cuDNN's buffers:
          // the full recompute's backward saves three passes (0.8 GB a layer at the 7B shape).
          // O and the statistics were cuDNN's outputs there, their padding rows undefined.
          qkv16 = reinterpret_cast<const Bf16Bits*>(qkv_bf16_.data());
          out16 = reinterpret_cast<const Bf16Bits*>(zero_padded(out_bf16_, M, w_out));
          stats = padded_stats(M, shape.heads);
        } else {              // the copies a forward with these arguments would have left
          copies_held_ = {};  // (until they are all made)
          stats = padded_stats(M, shape.heads);
          qkv16 = bf16_copy(qkv_bf16_, qkv, M, w_qkv);
          out16 = bf16_copy(out_bf16_, out, M, w_out);  // exact: O was bf16 values
          device_.copy(stats, lse, static_cast<std::size_t>(M * shape.heads) * sizeof(float));
          copies_held_ = {qkv, out, lse, M, shape};
        }
        dout16 = bf16_copy(dout_bf16_, diff_out, M, w_out);
      }
      {
        ProfileScope profile(profiler_, ProfileCategory::kAttention);
        cudnn_->backward(dq16, dk16, dv16, dout16, qkv16, out16, stats, segments, M, shape);
      }
      ProfileScope profile(profiler_, ProfileCategory::kConvert);
      Bf16Bits* rounded = rounded_bits(diff_qkv_rounded);
      if (rotated) {  // (RoPE's backward and the rounding in the widening's one pass)
        upload_rope(*rotated->table);
        cuda::unrotate_widen(
            s_, {diff_qkv, rounded, w_qkv, dq16, dk16, dv16, fused ? w_qkv : w_out,
                 fused ? w_qkv : w_kv, M, shape.heads, shape.kv_heads, shape.head_dim / 2,
                 rotated->positions, rope_cos_.data(), rope_sin_.data()});
      } else if (fused) {
        cuda::widen_bf16(s_, diff_qkv, dq16, M * w_qkv, rounded);
      } else {
        cuda::widen_bf16_columns(s_, diff_qkv, w_qkv, dq16, M, w_out);
        cuda::widen_bf16_columns(s_, diff_qkv + w_out, w_qkv, dk16, M, w_kv);
        cuda::widen_bf16_columns(s_, diff_qkv + w_out + w_kv, w_qkv, dv16, M, w_kv);
        if (rounded) cuda::to_bf16(s_, rounded, diff_qkv, M * w_qkv);
      }
      return;
    }
#endif
    {
      ProfileScope profile(profiler_, ProfileCategory::kAttention);
      float* delta = delta_.ensure(device_, static_cast<std::size_t>(M * shape.heads));
      cuda::attention_backward(s_, diff_qkv, diff_out, qkv, out, lse, delta,
                               geometry(segments, M, shape), round_operands(shape, options));
    }
    if (rotated) this->rope_rotate_qk(diff_qkv, *rotated, M, shape, true);
    if (!diff_qkv_rounded) return;
    ProfileScope profile(profiler_, ProfileCategory::kConvert);
    cuda::to_bf16(s_, rounded_bits(diff_qkv_rounded), diff_qkv, M * shape.qkv_stride());
  }
  void attention_cached(Act* out, const Act* q, Index q_stride, const Act* keys, const Act* values,
                        Index first, Index M, const AttentionShape& shape) override {
    ProfileScope profile(profiler_, ProfileCategory::kAttention);
    check_head_dim(shape);
    ZL_CHECK(shape.kv_heads > 0 && shape.heads % shape.kv_heads == 0);
    cuda::attention_cached(s_, out, q, q_stride, keys, values, first, M, shape.heads,
                           shape.kv_heads, shape.head_dim, shape.window);
  }

  void round_to_bf16(Act* x, bf16* copy, Index n) override {
    ProfileScope profile(profiler_, ProfileCategory::kConvert);
    cuda::round_to_bf16(s_, x, reinterpret_cast<Bf16Bits*>(copy), n);
  }
  void widen_bf16(Act* dst, const bf16* src, Index n) override {
    ProfileScope profile(profiler_, ProfileCategory::kConvert);
    cuda::widen_bf16(s_, dst, reinterpret_cast<const Bf16Bits*>(src), n);
  }
  Index first_nonfinite(const Act* x, Index n) override {
    ProfileScope profile(profiler_, ProfileCategory::kOther);
    return scan_result(n, [&](unsigned long long* f) { cuda::first_nonfinite(s_, x, n, f); });
  }
  Index first_nonfinite(const bf16* x, Index n) override {
    ProfileScope profile(profiler_, ProfileCategory::kOther);
    return scan_result(n, [&](unsigned long long* f) {
      cuda::first_nonfinite(s_, reinterpret_cast<const Bf16Bits*>(x), n, f);
    });
  }
  void gather_rows(Act* dst, const Act* src, const std::int32_t* rows, Index n, Index D) override {
    ProfileScope profile(profiler_, ProfileCategory::kOther);
    cuda::gather_rows(s_, dst, src, rows, n, D);
  }
  void scatter_rows(Act* dst, const Act* src, const std::int32_t* rows, Index n, Index D) override {
    ProfileScope profile(profiler_, ProfileCategory::kOther);
    cuda::scatter_rows(s_, dst, src, rows, n, D);
  }

 private:
  // bf16 policy: activations rounded to bf16 where the CPU rounds its matmul operands.
  static constexpr bool kRoundOperands = std::is_same_v<Weight, bf16>;

  // The GEMM operand: src itself, or in the bf16 policy its bf16 rounding: the producer's copy
  // where it made one (kernels.hpp GemmOperand), else rounded here (profiled as convert: on the
  // GPU that pass is worth seeing apart from the GEMM it feeds).
  Mat<const Weight> operand(GemmOperand<P> src, Index rows, Index cols) {
    if constexpr (std::is_same_v<Weight, Act>) {
      return Mat<const Act>::dense(src.values, rows, cols);
    } else {
      if (src.rounded) return Mat<const bf16>::dense(src.rounded, rows, cols);
      ProfileScope profile(profiler_, ProfileCategory::kConvert);
      bf16* converted = operand_.ensure(device_, static_cast<std::size_t>(rows * cols));
      cuda::to_bf16(s_, reinterpret_cast<Bf16Bits*>(converted), src.values, rows * cols);
      return Mat<const bf16>::dense(converted, rows, cols);
    }
  }
  // The attention's q/k/v LoRA expansions as rotate_round adds them (the scale rounded to
  // float as CudaLora's expansion takes it).
  static cuda::QkvExpansions expansions(const QkvLoraExpansions<Act>& lora) {
    cuda::QkvExpansions pass;
    for (int i = 0; i < 3; ++i) {
      pass.z[i] = lora.z[i];
      pass.b[i] = lora.b[i];
    }
    pass.rank = static_cast<int>(lora.rank);
    pass.scale = static_cast<float>(lora.scale);
    return pass;
  }
  // A producer's `rounded` destination as the kernels take it: bf16 bits, null for none (the
  // fp32 policy's operands are its activations: it never asks for a copy).
  static Bf16Bits* rounded_bits(Weight* rounded) {
    if constexpr (std::is_same_v<Weight, bf16>) {
      return reinterpret_cast<Bf16Bits*>(rounded);
    } else {
      refuse_rounded_copy<P>(rounded);
      return nullptr;
    }
  }

#ifdef ZEROLORA_CUDNN
  bool use_cudnn(const std::vector<Segment>& segments, Index M, const AttentionShape& shape,
                 const AttentionOptions& options) {
    if (!kRoundOperands || !options.fused || !cudnn_attention_supports(shape)) return false;
    if (!cudnn_) cudnn_ = std::make_unique<CudnnAttention>(device_, s_);
    return cudnn_->available(segments, M, shape);
  }
  // cuDNN's buffers hold cudnn_padded_rows(M) rows (ops/cudnn_plan.hpp: cuDNN may read past
  // the last token), the rows past M zero; the statistics too, in their own buffer, since the
  // layer's lse holds M rows only.
  Bf16Bits* bits_of(DeviceBuffer<bf16>& buffer, Index M, Index width) {
    return reinterpret_cast<Bf16Bits*>(
        buffer.ensure(device_, static_cast<std::size_t>(cudnn_padded_rows(M) * width)));
  }
  // A padded buffer whose rows past M are zero (the first M rows are the caller's to write).
  template <class T>
  T* zero_padded(DeviceBuffer<T>& buffer, Index M, Index width) {
    T* rows = buffer.ensure(device_, static_cast<std::size_t>(cudnn_padded_rows(M) * width));
    device_.fill_zero(rows + M * width,
                      static_cast<std::size_t>((cudnn_padded_rows(M) - M) * width) * sizeof(T));
    return rows;
  }
  const Bf16Bits* bf16_copy(DeviceBuffer<bf16>& buffer, const float* src, Index M, Index width) {
    auto* dst = reinterpret_cast<Bf16Bits*>(zero_padded(buffer, M, width));
    cuda::to_bf16(s_, dst, src, M * width);
    return dst;
  }
  float* padded_stats(Index M, Index heads) {
    return zero_padded(stats_, M, heads);
  }
  // Whether cuDNN's buffers hold the copies of these arguments: the caller's word (`from`) that
  // they are the last forward's and unchanged, checked against the arguments whose copies the
  // buffers hold (a word that does not hold is the caller's bug, named here).
  bool holds_copies_of(AttentionInputs from, const Act* qkv, const Act* out, const Act* lse,
                       Index M, const AttentionShape& shape) const {
    if (from != AttentionInputs::kLastForwards) return false;
    if (!copies_held_.same(qkv, out, lse, M, shape))
      throw InternalError(
          "attention_backward: told that its inputs are the last attention forward's, but " +
          std::string(copies_held_.qkv ? "that forward had other arguments"
                                       : "no forward through cuDNN has run since"));
    return true;
  }
  std::unique_ptr<CudnnAttention> cudnn_;
  DeviceBuffer<bf16> qkv_bf16_, out_bf16_, dout_bf16_, dqkv_bf16_;
  DeviceBuffer<float> stats_;
  // The arguments whose bf16 copies (q/k/v, O) and statistics qkv_bf16_, out_bf16_ and stats_
  // hold, written by the last forward through cuDNN or the last backward that copied them (qkv
  // null: none).
  struct CopiesHeld {
    const Act* qkv = nullptr;
    const Act* out = nullptr;
    const Act* lse = nullptr;
    Index M = 0;
    AttentionShape shape{0, 0, 0};
    bool same(const Act* q, const Act* o, const Act* l, Index m, const AttentionShape& s) const {
      return qkv && q == qkv && o == out && l == lse && m == M && s.heads == shape.heads &&
             s.kv_heads == shape.kv_heads && s.head_dim == shape.head_dim &&
             s.window == shape.window;
    }
  } copies_held_;
#endif

  // Keyed by the table's address, positions and width: a model owns its table for its life.
  void upload_rope(const RopeTable& table) {
    if (&table == rope_table_ && table.positions() == rope_positions_ && table.half() == rope_half_)
      return;
    const auto n = static_cast<std::size_t>(table.positions() * table.half());
    rope_cos_.ensure(device_, n);
    rope_sin_.ensure(device_, n);
    device_.copy_to_device(rope_cos_.data(), table.cos(0), n * sizeof(float));
    device_.copy_to_device(rope_sin_.data(), table.sin(0), n * sizeof(float));
    rope_table_ = &table;
    rope_positions_ = table.positions();
    rope_half_ = table.half();
  }

  // RoPE's table rotates pairs half a head apart: the heads it rotates back are its width.
  static void check_rope_heads(const RopeTable& table, const AttentionShape& shape) {
    if (2 * table.half() != shape.head_dim)
      throw InternalError("attention: a RoPE table of half " + std::to_string(table.half()) +
                          " for heads of " + std::to_string(shape.head_dim));
  }
  void check_head_dim(const AttentionShape& shape) const {
    if (shape.head_dim > kMaxHeadDim)
      throw UnsupportedError("CUDA attention: head_dim " + std::to_string(shape.head_dim) +
                             " is over the " + std::to_string(kMaxHeadDim) + " supported");
  }

  // The batch's segments on the device (attention_geometry.hpp).
  AttentionGeometry geometry(const std::vector<Segment>& segments, Index M,
                             const AttentionShape& shape) {
    check_head_dim(shape);
    return segments_on_device_.geometry(device_, segments, M, shape);
  }

  template <class Launch>
  Index scan_result(Index n, Launch&& launch) {
    unsigned long long* first = first_.ensure(device_, 1);
    launch(first);
    unsigned long long result = 0;
    device_.copy_to_host(&result, first, sizeof result);
    return result >= static_cast<unsigned long long>(n) ? Index{-1} : static_cast<Index>(result);
  }

  CudaDevice& device_;
  Profiler& profiler_;
  cudaStream_t s_;
  LtGemm gemm_;
  CudaLora lora_;  // after gemm_, which it uses
  DeviceBuffer<bf16> operand_;
  DeviceBuffer<float> rope_cos_, rope_sin_, delta_;
  DeviceBuffer<double> row_loss_;
  std::vector<double> row_loss_host_;
  DeviceBuffer<unsigned long long> first_;
  const RopeTable* rope_table_ = nullptr;
  Index rope_positions_ = 0, rope_half_ = 0;
  SegmentsOnDevice segments_on_device_;
  std::vector<std::string> notes_;  // take_notes(): new since the last call
  std::set<std::string> noted_;     // every line said, so that each is said once
  // What the last attention note depended on (note_attention).
  struct AttentionNoteInputs {
    bool cudnn;
    Index head_dim;
    bool fused;
    std::size_t refusals;
    bool operator==(const AttentionNoteInputs&) const = default;
  };
  std::optional<AttentionNoteInputs> attention_noted_;
};

}  // namespace

template <class P>
std::unique_ptr<Kernels<P>> make_cuda_kernels(Runtime& rt) {
  auto* device = dynamic_cast<CudaDevice*>(&rt.device());
  if (!device) throw DeviceError("the CUDA kernels need a CUDA device, not " + rt.device().name());
  if constexpr (std::is_same_v<typename P::Act, float>)
    return std::make_unique<CudaKernels<P>>(*device, rt.profiler());
  else
    throw UnsupportedError(std::string("the CUDA backend has no ") + std::string(P::kName) +
                           " kernels (fp64 is for CPU gradient checks)");
}

template std::unique_ptr<Kernels<Fp32Policy>> make_cuda_kernels<Fp32Policy>(Runtime&);
template std::unique_ptr<Kernels<Bf16Policy>> make_cuda_kernels<Bf16Policy>(Runtime&);
template std::unique_ptr<Kernels<Fp64Policy>> make_cuda_kernels<Fp64Policy>(Runtime&);

}  // namespace zerolora::cuda
