// The kernel interface: every op the model runs, forward and backward, on the runtime's device.
// The model code (src/model) is written once against it; CpuKernels (cpu_kernels.hpp) implements
// it with the OpenMP/oneDNN kernels of this folder, the CUDA backend (src/cuda) with CUDA
// kernels, cuBLASLt and cuDNN. Pointers are device pointers (Runtime::device()); sizes, segment
// lists and the rope table are host values, which a device implementation uploads as it needs.
// Each op's contract (shapes, = or +=) is the one of its CPU function, named in the comment.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/bf16.hpp"
#include "core/error.hpp"
#include "core/runtime.hpp"
#include "ops/attention.hpp"
#include "ops/lora_branch.hpp"
#include "ops/matrix.hpp"
#include "ops/rope.hpp"

namespace zerolora {

// A base projection's activation operand (linear_forward's src, linear_backward_data's diff_dst)
// and, where the op that produced the values also wrote their rounding to the weight type (the
// bf16 policy's GEMMs take bf16 operands), that copy: the projection then reads it instead of
// rounding the values itself, a pass over them on the GPU. `rounded` null: the projection rounds.
// Producers take the copy's destination as `rounded` (null: none wanted; policies whose weights
// are the activations' type pass null).
template <class P>
struct GemmOperand {
  const typename P::Act* values;
  const typename P::Weight* rounded = nullptr;
  GemmOperand(const typename P::Act* values_in,  // NOLINT: a plain pointer is the common case
              const typename P::Weight* rounded_in = nullptr)
      : values(values_in), rounded(rounded_in) {}
};

// A producer's guard where the policy's weights are the activations' type: it has no rounding to
// write, so a `rounded` destination is a caller's bug.
template <class P>
void refuse_rounded_copy(const void* rounded) {
  if (rounded)
    throw InternalError("a rounded copy asked of the " + std::string(P::kName) +
                        " policy, whose GEMM operands are its activations");
}

// The RoPE of q and k in an attention (attention_forward's `rotate`, attention_backward's
// `rotated` below): `positions` on the device, the table on the host, as rope_rotate takes them.
struct RopeRotation {
  const std::int32_t* positions;
  const RopeTable* table;
};

// q's, k's and v's LoRA branches as attention_forward finishes them (its `lora`): each branch's
// z already made (lora_project), the rest of lora_forward still to add to its columns of the
// fused q/k/v rows before RoPE, y += scale z B^T (lora_expand). z[i] null: module i (q, k, v)
// has no adapter.
template <class Act>
struct QkvLoraExpansions {
  const Act* z[3] = {};
  const Act* b[3] = {};
  Index rank = 0;
  double scale = 0.0;
};

// Branch i's (q's, k's or v's) columns of M fused q/k/v rows.
template <class T>
Mat<T> qkv_branch_columns(T* qkv, int branch, Index M, const AttentionShape& shape) {
  return {qkv + shape.qkv_first_column(branch), M, shape.qkv_width(branch), shape.qkv_stride(), 1};
}

// What attention_backward may assume of its qkv, out and lse (its `from` below).
enum class AttentionInputs {
  kAny,           // nothing: whatever the caller has
  kLastForwards,  // the last attention_forward's inputs and outputs, unchanged since
};

// linear_forward_residual's contract: dst dense, the residual apart from it.
template <class Act>
void check_residual_operands(Mat<Act> dst, const Act* residual) {
  const auto bytes = static_cast<std::size_t>(dst.rows * dst.cols) * sizeof(Act);
  if (dst.cs != 1 || dst.rs != dst.cols || !residual ||
      byte_ranges_overlap(dst.data, residual, bytes))
    throw InternalError("linear_forward_residual: dst must be dense and apart from the residual");
}

// One LoRA branch of Kernels::lora_forward_shared / lora_backward_shared: its output (or
// output gradient), z, weights A and B and their gradients, and its dropout draw. At namespace
// scope, not in Kernels, so that the policies that share an activation type share these types.
template <class Act>
struct LoraForwardBranch {
  Mat<Act> dst;
  Act* z;
  const Act* a;
  const Act* b;
  DropoutMask dropout;
};
template <class Act>
struct LoraBackwardBranch {
  Act* diff_a;
  Act* diff_b;
  Mat<const Act> diff_dst;
  const Act* z;
  const Act* a;
  const Act* b;
  DropoutMask dropout;
};

template <class P>
class Kernels {
 public:
  using Act = typename P::Act;
  using Weight = typename P::Weight;
  virtual ~Kernels() = default;

  // ops/embedding.hpp
  virtual void embedding_forward(Act* dst, const std::int32_t* tokens, const Weight* table, Index M,
                                 Index D) = 0;
  // ops/rmsnorm.hpp
  virtual void rmsnorm_forward(Act* dst, Act* rstd, const Act* src, const Weight* weight, Index M,
                               Index D, double eps, Weight* rounded) = 0;
  virtual void rmsnorm_backward(Act* diff_src, const Act* diff_dst, const Act* src, const Act* rstd,
                                const Weight* weight, Index M, Index D, bool accumulate) = 0;
  // ops/rope.hpp: `positions` on the device, the table on the host
  virtual void rope_rotate(Act* x, const std::int32_t* positions, const RopeTable& table, Index M,
                           Index row_stride, Index heads, bool inverse) = 0;
  // RoPE on q's and k's heads of fused q/k/v rows (consecutive in the row: one rotation takes
  // both), as the attention runs it.
  void rope_rotate_qk(Act* qkv, const RopeRotation& rope, Index M, const AttentionShape& shape,
                      bool inverse) {
    rope_rotate(qkv, rope.positions, *rope.table, M, shape.qkv_stride(),
                shape.heads + shape.kv_heads, inverse);
  }
  // ops/swiglu.hpp. dst (diff_gate_up) null: only the rounded copy is wanted, the projection's
  // operand where no LoRA branch reads the fp32 values (a GPU then writes no fp32 values at all).
  virtual void swiglu_forward(Act* dst, const Act* gate_up, Index M, Index I, Weight* rounded) = 0;
  virtual void swiglu_backward(Act* diff_gate_up, const Act* diff_dst, const Act* gate_up, Index M,
                               Index I, Weight* rounded) = 0;
  // ops/cross_entropy.hpp: the summed loss comes back to the host
  virtual double cross_entropy(Act* logits, const std::int32_t* targets, Index R, Index V,
                               double grad_scale, bool write_grad) = 0;

  // ops/linear.hpp: base projections (bf16 operands in the bf16 policy)
  virtual void linear_forward(Mat<Act> dst, GemmOperand<P> src, const Weight* weight, Index in,
                              bool accumulate) = 0;
  // dst (=) residual + src W^T, dst and residual dense [M, out] and apart: the residual stream's
  // add folded into the projection (on a GPU cuBLASLt reads C = residual and writes D = dst,
  // instead of a copy of the residual into dst and an accumulating GEMM).
  virtual void linear_forward_residual(Mat<Act> dst, const Act* residual, GemmOperand<P> src,
                                       const Weight* weight, Index in) = 0;
  virtual void linear_backward_data(Act* diff_src, GemmOperand<P> diff_dst, const Weight* weight,
                                    Index M, Index out, Index in) = 0;
  virtual void linear_add_bias(Mat<Act> dst, const Weight* bias) = 0;
  // ops/lora_branch.hpp: the LoRA branch, dropout masks regenerated from the mask's key
  virtual void lora_project(Act* z, Mat<const Act> src, const Act* a, Index rank,
                            const DropoutMask& dropout) = 0;
  virtual void lora_forward(Mat<Act> dst, Act* z, Mat<const Act> src, const Act* a, const Act* b,
                            Index rank, double scale, const DropoutMask& dropout) = 0;
  // lora_forward's second half, dst += scale z B^T, z made by lora_project.
  virtual void lora_expand(Mat<Act> dst, const Act* z, const Act* b, Index rank, double scale) = 0;
  // Those of q's, k's and v's branches, on their columns of the fused q/k/v rows (what
  // attention_forward does first where it has no pass to fuse them into).
  void lora_expand_qkv(Act* qkv, const QkvLoraExpansions<Act>& lora, Index M,
                       const AttentionShape& shape) {
    for (int i = 0; i < 3; ++i)
      if (lora.z[i])
        lora_expand(qkv_branch_columns(qkv, i, M, shape), lora.z[i], lora.b[i], lora.rank,
                    lora.scale);
  }
  virtual void lora_backward(Mat<Act> diff_src, Act* diff_a, Act* diff_b, Mat<const Act> diff_dst,
                             const Act* z, Mat<const Act> src, const Act* a, const Act* b,
                             Index rank, double scale, const DropoutMask& dropout) = 0;
  // LoRA branches that share their input src (q, k and v on the attention norm's output; gate
  // and up on the MLP norm's), given together so that a backend may read src, and backward
  // read and write diff_src, once for all of them (the GPU's backward does). Each branch's results
  // are those of lora_forward / lora_backward called for it alone, in the order given (diff_src
  // takes the branches' terms in that order); what this default does.
  using LoraForwardBranch = zerolora::LoraForwardBranch<Act>;
  using LoraBackwardBranch = zerolora::LoraBackwardBranch<Act>;
  virtual void lora_forward_shared(std::span<const LoraForwardBranch> branches, Mat<const Act> src,
                                   Index rank, double scale) {
    for (const auto& br : branches)
      lora_forward(br.dst, br.z, src, br.a, br.b, rank, scale, br.dropout);
  }
  virtual void lora_backward_shared(Mat<Act> diff_src, std::span<const LoraBackwardBranch> branches,
                                    Mat<const Act> src, Index rank, double scale) {
    for (const auto& br : branches)
      lora_backward(diff_src, br.diff_a, br.diff_b, br.diff_dst, br.z, src, br.a, br.b, rank, scale,
                    br.dropout);
  }

  // ops/attention.hpp: segments on the host; out_rounded as a producer's `rounded` above.
  // The q/k/v projection's last steps, done in place on qkv first: `lora` (null: none), q's, k's
  // and v's LoRA expansions (lora_expand_qkv), then `rotate` (null: none), the RoPE that rotates
  // q's and k's heads (as rope_rotate). A GPU does both as it copies q/k/v to bf16 for cuDNN.
  virtual void attention_forward(Act* out, Weight* out_rounded, Act* lse, Act* qkv,
                                 const std::vector<Segment>& segments, Index M,
                                 const AttentionShape& shape, const AttentionOptions& options,
                                 const QkvLoraExpansions<Act>* lora,
                                 const RopeRotation* rotate) = 0;
  // `rotated` (null: none): the RoPE that rotated q and k before the attention; diff_qkv then
  // ends as the gradient of q/k/v before it (rope_rotate's inverse on q's and k's heads, which
  // a GPU applies as it widens cuDNN's gradients). diff_qkv_rounded: as a producer's `rounded`
  // above, the rounding of diff_qkv as it ends. `from`: whether qkv, out and lse are the inputs
  // and outputs of the last attention_forward this object ran, unchanged since (a layer's full
  // recompute runs its forward right before its backward); a backend that keeps its own copies
  // of them (the GPU's bf16 copies in cuDNN's layout) then uses those rather than make them
  // again.
  virtual void attention_backward(Act* diff_qkv, Weight* diff_qkv_rounded, const Act* diff_out,
                                  const Act* qkv, const Act* out, const Act* lse,
                                  const std::vector<Segment>& segments, Index M,
                                  const AttentionShape& shape, const AttentionOptions& options,
                                  const RopeRotation* rotated, AttentionInputs from) = 0;
  virtual void attention_cached(Act* out, const Act* q, Index q_stride, const Act* keys,
                                const Act* values, Index first, Index M,
                                const AttentionShape& shape) = 0;

  // The bf16 residual stream (ops/convert.hpp; float activations only).
  virtual void round_to_bf16(Act* x, bf16* copy, Index n) = 0;
  virtual void widen_bf16(Act* dst, const bf16* src, Index n) = 0;
  // Index of the first NaN or Inf of x[0, n), -1 when all are finite (core/finite.hpp).
  virtual Index first_nonfinite(const Act* x, Index n) = 0;
  virtual Index first_nonfinite(const bf16* x, Index n) = 0;
  // dst row i (=) src row rows[i], and dst row rows[i] (=) src row i; rows on the device.
  virtual void gather_rows(Act* dst, const Act* src, const std::int32_t* rows, Index n,
                           Index D) = 0;
  virtual void scatter_rows(Act* dst, const Act* src, const std::int32_t* rows, Index n,
                            Index D) = 0;

  // What the kernels chose that the run should tell, each line once (on a GPU: which attention
  // runs, and why not cuDNN's where the far slower reference kernel does), since the last call.
  virtual std::vector<std::string> take_notes() { return {}; }
};

}  // namespace zerolora
