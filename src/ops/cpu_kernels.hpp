// The kernel interface on the CPU: the OpenMP/oneDNN kernels of this folder, with the scratch
// they need (matmul operands in the weight type, the LoRA branch's dropout copies, attention's
// per-thread tiles) owned here rather than by the model.
#pragma once

#include <memory>

#include "core/buffer.hpp"
#include "ops/kernels.hpp"

namespace zerolora {

template <class P>
class CpuKernels final : public Kernels<P> {
 public:
  using Act = typename P::Act;
  using Weight = typename P::Weight;
  explicit CpuKernels(Runtime& rt) : rt_(rt) {}

  void embedding_forward(Act* dst, const std::int32_t* tokens, const Weight* table, Index M,
                         Index D) override;
  void rmsnorm_forward(Act* dst, Act* rstd, const Act* src, const Weight* weight, Index M, Index D,
                       double eps, Weight* rounded) override;
  void rmsnorm_backward(Act* diff_src, const Act* diff_dst, const Act* src, const Act* rstd,
                        const Weight* weight, Index M, Index D, bool accumulate) override;
  void rope_rotate(Act* x, const std::int32_t* positions, const RopeTable& table, Index M,
                   Index row_stride, Index heads, bool inverse) override;
  void swiglu_forward(Act* dst, const Act* gate_up, Index M, Index I, Weight* rounded) override;
  void swiglu_backward(Act* diff_gate_up, const Act* diff_dst, const Act* gate_up, Index M, Index I,
                       Weight* rounded) override;
  double cross_entropy(Act* logits, const std::int32_t* targets, Index R, Index V,
                       double grad_scale, bool write_grad) override;
  void linear_forward(Mat<Act> dst, GemmOperand<P> src, const Weight* weight, Index in,
                      bool accumulate) override;
  void linear_forward_residual(Mat<Act> dst, const Act* residual, GemmOperand<P> src,
                               const Weight* weight, Index in) override;
  void linear_add_bias(Mat<Act> dst, const Weight* bias) override;
  void linear_backward_data(Act* diff_src, GemmOperand<P> diff_dst, const Weight* weight, Index M,
                            Index out, Index in) override;
  void lora_project(Act* z, Mat<const Act> src, const Act* a, Index rank,
                    const DropoutMask& dropout) override;
  void lora_forward(Mat<Act> dst, Act* z, Mat<const Act> src, const Act* a, const Act* b,
                    Index rank, double scale, const DropoutMask& dropout) override;
  void lora_expand(Mat<Act> dst, const Act* z, const Act* b, Index rank, double scale) override;
  void lora_backward(Mat<Act> diff_src, Act* diff_a, Act* diff_b, Mat<const Act> diff_dst,
                     const Act* z, Mat<const Act> src, const Act* a, const Act* b, Index rank,
                     double scale, const DropoutMask& dropout) override;
  void attention_forward(Act* out, Weight* out_rounded, Act* lse, Act* qkv,
                         const std::vector<Segment>& segments, Index M, const AttentionShape& shape,
                         const AttentionOptions& options, const QkvLoraExpansions<Act>* lora,
                         const RopeRotation* rotate) override;
  void attention_backward(Act* diff_qkv, Weight* diff_qkv_rounded, const Act* diff_out,
                          const Act* qkv, const Act* out, const Act* lse,
                          const std::vector<Segment>& segments, Index M,
                          const AttentionShape& shape, const AttentionOptions& options,
                          const RopeRotation* rotated, AttentionInputs from) override;
  void attention_cached(Act* out, const Act* q, Index q_stride, const Act* keys, const Act* values,
                        Index first, Index M, const AttentionShape& shape) override;
  void round_to_bf16(Act* x, bf16* copy, Index n) override;
  void widen_bf16(Act* dst, const bf16* src, Index n) override;
  Index first_nonfinite(const Act* x, Index n) override;
  Index first_nonfinite(const bf16* x, Index n) override;
  void gather_rows(Act* dst, const Act* src, const std::int32_t* rows, Index n, Index D) override;
  void scatter_rows(Act* dst, const Act* src, const std::int32_t* rows, Index n, Index D) override;

 private:
  void write_rounded(Weight* rounded, const Act* values, Index n);
  // dst, or where it is null (only the rounding wanted: kernels.hpp, swiglu) n values of scratch.
  Act* values_or_scratch(Act* dst, const Weight* rounded, Index n);

  Runtime& rt_;
  Buffer<Weight> operand_;
  Buffer<Act> lora_scratch_, values_scratch_;
  AttentionWorkspace attention_;
};

}  // namespace zerolora
