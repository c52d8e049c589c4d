#include "ops/cpu_kernels.hpp"

#include <cstring>
#include <type_traits>

#include "core/error.hpp"
#include "core/finite.hpp"
#include "core/precision.hpp"
#include "core/profiler.hpp"
#include "ops/convert.hpp"
#include "ops/cross_entropy.hpp"
#include "ops/embedding.hpp"
#include "ops/linear.hpp"
#include "ops/rmsnorm.hpp"
#include "ops/swiglu.hpp"

namespace zerolora {

// The producers' `rounded` copies (kernels.hpp GemmOperand): the same rounding the projection
// would do on the operand, done where the values are made.
template <class P>
void CpuKernels<P>::write_rounded(Weight* rounded, const Act* values, Index n) {
  if constexpr (std::is_same_v<Act, Weight>)
    refuse_rounded_copy<P>(rounded);
  else if (rounded)
    convert(rt_, rounded, values, n);
}

template <class P>
typename P::Act* CpuKernels<P>::values_or_scratch(Act* dst, const Weight* rounded, Index n) {
  if (dst) return dst;
  if (!rounded) throw InternalError("an op asked for neither its values nor their rounding");
  values_scratch_.ensure(static_cast<std::size_t>(n));
  return values_scratch_.data();
}

template <class P>
void CpuKernels<P>::embedding_forward(Act* dst, const std::int32_t* tokens, const Weight* table,
                                      Index M, Index D) {
  zerolora::embedding_forward(rt_, dst, tokens, table, M, D);
}

template <class P>
void CpuKernels<P>::rmsnorm_forward(Act* dst, Act* rstd, const Act* src, const Weight* weight,
                                    Index M, Index D, double eps, Weight* rounded) {
  zerolora::rmsnorm_forward(rt_, dst, rstd, src, weight, M, D, eps);
  write_rounded(rounded, dst, M * D);
}

template <class P>
void CpuKernels<P>::rmsnorm_backward(Act* diff_src, const Act* diff_dst, const Act* src,
                                     const Act* rstd, const Weight* weight, Index M, Index D,
                                     bool accumulate) {
  zerolora::rmsnorm_backward(rt_, diff_src, diff_dst, src, rstd, weight, M, D, accumulate);
}

template <class P>
void CpuKernels<P>::rope_rotate(Act* x, const std::int32_t* positions, const RopeTable& table,
                                Index M, Index row_stride, Index heads, bool inverse) {
  zerolora::rope_rotate(rt_, x, positions, table, M, row_stride, heads, inverse);
}

template <class P>
void CpuKernels<P>::swiglu_forward(Act* dst, const Act* gate_up, Index M, Index I,
                                   Weight* rounded) {
  Act* values = values_or_scratch(dst, rounded, M * I);
  zerolora::swiglu_forward(rt_, values, gate_up, M, I);
  write_rounded(rounded, values, M * I);
}

template <class P>
void CpuKernels<P>::swiglu_backward(Act* diff_gate_up, const Act* diff_dst, const Act* gate_up,
                                    Index M, Index I, Weight* rounded) {
  Act* values = values_or_scratch(diff_gate_up, rounded, M * 2 * I);
  zerolora::swiglu_backward(rt_, values, diff_dst, gate_up, M, I);
  write_rounded(rounded, values, M * 2 * I);
}

template <class P>
double CpuKernels<P>::cross_entropy(Act* logits, const std::int32_t* targets, Index R, Index V,
                                    double grad_scale, bool write_grad) {
  return zerolora::cross_entropy(rt_, logits, targets, R, V, grad_scale, write_grad);
}

template <class P>
void CpuKernels<P>::linear_forward(Mat<Act> dst, GemmOperand<P> src, const Weight* weight, Index in,
                                   bool accumulate) {
  zerolora::linear_forward(rt_, dst, src.values, src.rounded, weight, in, accumulate, operand_);
}

// On the CPU: the residual copied into dst, then the accumulating GEMM (oneDNN's sum post-op
// adds dst). A post-op reading the residual itself would save the copy, a pass over [M, D] that
// is a small share of a CPU step beside the GEMM.
template <class P>
void CpuKernels<P>::linear_forward_residual(Mat<Act> dst, const Act* residual, GemmOperand<P> src,
                                            const Weight* weight, Index in) {
  check_residual_operands(dst, residual);
  {
    ProfileScope profile(rt_.profiler(), ProfileCategory::kOther);
    rt_.device().copy(dst.data, residual,
                      static_cast<std::size_t>(dst.rows * dst.cols) * sizeof(Act));
  }
  linear_forward(dst, src, weight, in, true);
}

template <class P>
void CpuKernels<P>::linear_add_bias(Mat<Act> dst, const Weight* bias) {
  zerolora::linear_add_bias(rt_, dst, bias);
}

template <class P>
void CpuKernels<P>::linear_backward_data(Act* diff_src, GemmOperand<P> diff_dst,
                                         const Weight* weight, Index M, Index out, Index in) {
  zerolora::linear_backward_data(rt_, diff_src, diff_dst.values, diff_dst.rounded, weight, M, out,
                                 in, operand_);
}

template <class P>
void CpuKernels<P>::lora_project(Act* z, Mat<const Act> src, const Act* a, Index rank,
                                 const DropoutMask& dropout) {
  zerolora::lora_project<Act>(rt_, z, src, a, rank, dropout, lora_scratch_);
}

template <class P>
void CpuKernels<P>::lora_forward(Mat<Act> dst, Act* z, Mat<const Act> src, const Act* a,
                                 const Act* b, Index rank, double scale,
                                 const DropoutMask& dropout) {
  zerolora::lora_forward<Act>(rt_, dst, z, src, a, b, rank, scale, dropout, lora_scratch_);
}

template <class P>
void CpuKernels<P>::lora_expand(Mat<Act> dst, const Act* z, const Act* b, Index rank,
                                double scale) {
  zerolora::lora_expand<Act>(rt_, dst, z, b, rank, scale);
}

template <class P>
void CpuKernels<P>::lora_backward(Mat<Act> diff_src, Act* diff_a, Act* diff_b,
                                  Mat<const Act> diff_dst, const Act* z, Mat<const Act> src,
                                  const Act* a, const Act* b, Index rank, double scale,
                                  const DropoutMask& dropout) {
  zerolora::lora_backward<Act>(rt_, diff_src, diff_a, diff_b, diff_dst, z, src, a, b, rank, scale,
                               dropout, lora_scratch_);
}

template <class P>
void CpuKernels<P>::attention_forward(Act* out, Weight* out_rounded, Act* lse, Act* qkv,
                                      const std::vector<Segment>& segments, Index M,
                                      const AttentionShape& shape, const AttentionOptions& options,
                                      const QkvLoraExpansions<Act>* lora,
                                      const RopeRotation* rotate) {
  if (lora) this->lora_expand_qkv(qkv, *lora, M, shape);
  if (rotate) this->rope_rotate_qk(qkv, *rotate, M, shape, false);
  zerolora::attention_forward<Act, Weight>(rt_, out, lse, qkv, segments, M, shape, options,
                                           attention_);
  write_rounded(out_rounded, out, M * shape.heads * shape.head_dim);
}

template <class P>
void CpuKernels<P>::attention_backward(Act* diff_qkv, Weight* diff_qkv_rounded, const Act* diff_out,
                                       const Act* qkv, const Act* out, const Act* lse,
                                       const std::vector<Segment>& segments, Index M,
                                       const AttentionShape& shape, const AttentionOptions& options,
                                       const RopeRotation* rotated,
                                       AttentionInputs /*from: the CPU keeps no copies*/) {
  zerolora::attention_backward<Act, Weight>(rt_, diff_qkv, diff_out, qkv, out, lse, segments, M,
                                            shape, options, attention_);
  if (rotated) this->rope_rotate_qk(diff_qkv, *rotated, M, shape, true);
  write_rounded(diff_qkv_rounded, diff_qkv, M * shape.qkv_stride());
}

template <class P>
void CpuKernels<P>::attention_cached(Act* out, const Act* q, Index q_stride, const Act* keys,
                                     const Act* values, Index first, Index M,
                                     const AttentionShape& shape) {
  zerolora::attention_cached(rt_, out, q, q_stride, keys, values, first, M, shape);
}

template <class P>
void CpuKernels<P>::round_to_bf16(Act* x, bf16* copy, Index n) {
  if constexpr (std::is_same_v<Act, float>)
    zerolora::round_to_bf16(rt_, x, copy, n);
  else
    throw InternalError("round_to_bf16: the " + std::string(P::kName) +
                        " policy has no bf16 stream");
}

template <class P>
void CpuKernels<P>::widen_bf16(Act* dst, const bf16* src, Index n) {
  if constexpr (std::is_same_v<Act, float>)
    convert(rt_, dst, src, n);
  else
    throw InternalError("widen_bf16: the " + std::string(P::kName) + " policy has no bf16 stream");
}

template <class P>
Index CpuKernels<P>::first_nonfinite(const Act* x, Index n) {
  return zerolora::first_nonfinite(rt_, x, n);
}

template <class P>
Index CpuKernels<P>::first_nonfinite(const bf16* x, Index n) {
  return zerolora::first_nonfinite(rt_, x, n);
}

template <class P>
void CpuKernels<P>::gather_rows(Act* dst, const Act* src, const std::int32_t* rows, Index n,
                                Index D) {
  ProfileScope profile(rt_.profiler(), ProfileCategory::kOther);
  for (Index i = 0; i < n; ++i)
    std::memcpy(dst + i * D, src + static_cast<Index>(rows[i]) * D,
                static_cast<std::size_t>(D) * sizeof(Act));
}

template <class P>
void CpuKernels<P>::scatter_rows(Act* dst, const Act* src, const std::int32_t* rows, Index n,
                                 Index D) {
  ProfileScope profile(rt_.profiler(), ProfileCategory::kOther);
  for (Index i = 0; i < n; ++i)
    std::memcpy(dst + static_cast<Index>(rows[i]) * D, src + i * D,
                static_cast<std::size_t>(D) * sizeof(Act));
}

template class CpuKernels<Fp32Policy>;
template class CpuKernels<Bf16Policy>;
template class CpuKernels<Fp64Policy>;

}  // namespace zerolora
