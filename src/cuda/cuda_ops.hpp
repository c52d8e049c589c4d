// The CUDA kernels of the backend, as plain functions over device pointers and a stream: the
// one header the .cu files and the C++ side (cuda_kernels.cpp) share. Activations are fp32;
// bf16 values are passed as their 16-bit patterns (std::uint16_t), converted on the device by
// the same round-to-nearest-even as src/core/bf16.hpp. Each launch is checked (DeviceError
// naming the kernel and its shape). Forward and backward of an op live side by side in one .cu
// file per op, like the CPU ops in src/ops.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <string>

namespace zerolora::cuda {

using Index = std::int64_t;
using Bf16Bits = std::uint16_t;

// kernel_image.cu: why this build cannot run kernels on the current GPU (whose properties these
// are), or "" where it can: no code in it for the GPU's compute capability. Creates the GPU's
// CUDA context.
std::string missing_kernel_image(const cudaDeviceProp& props);
// kernel_image.cu: what this backend was built with (CMAKE_CUDA_ARCHITECTURES, cuDNN or not).
std::string cuda_build_summary();

// Throws DeviceError when the last launch (or an earlier asynchronous error) failed.
void check_launch(const char* kernel, Index rows, Index cols);
// Throws DeviceError naming the kernel and why its arguments were refused before a launch.
[[noreturn]] void refuse_launch(const char* kernel, const char* why);

// embedding.cu: dst [M, D] (=) table rows (fp32 or bf16 table)
void embedding_forward(cudaStream_t s, float* dst, const std::int32_t* tokens, const float* table,
                       Index M, Index D);
void embedding_forward(cudaStream_t s, float* dst, const std::int32_t* tokens,
                       const Bf16Bits* table, Index M, Index D);

// rmsnorm.cu (ops/rmsnorm.hpp); `rounded` (null: none) receives dst rounded to bf16, as do the
// SwiGLU passes' (ops/kernels.hpp GemmOperand)
template <class W>
void rmsnorm_forward(cudaStream_t s, float* dst, float* rstd, const float* src, const W* weight,
                     Index M, Index D, float eps, Bf16Bits* rounded);
template <class W>
void rmsnorm_backward(cudaStream_t s, float* diff_src, const float* diff_dst, const float* src,
                      const float* rstd, const W* weight, Index M, Index D, bool accumulate);
// The quads (16-byte groups of four values) each thread keeps of a row of D values, 1, 2, 4, 8
// or 16; 0 where the row takes one column a thread (D not a multiple of 4 or above 16384, or a
// pointer given, float or bf16, not aligned for its quads; null ones are not used).
int rmsnorm_quads_per_thread(Index D, std::initializer_list<const void*> floats,
                             std::initializer_list<const void*> bf16s);

// rope.cu (ops/rope.hpp): cos/sin tables [positions, half] on the device
void rope_rotate(cudaStream_t s, float* x, const std::int32_t* positions, const float* cos_table,
                 const float* sin_table, Index half, Index M, Index row_stride, Index heads,
                 bool inverse);

// RoPE's backward fused with the widening of cuDNN's attention gradients: dQ, dK and dV (bf16;
// dQ's rows q_ld apart, dK's and dV's kv_ld) widened into q/k/v's fused fp32 rows (ld apart: q's
// heads, then k's, then v's), q's and k's heads rotated back (rope_rotate's inverse), and the
// result's bf16 rounding written to `rounded` (null: none), in one pass (half a head up to 1024
// columns).
struct UnrotateWiden {
  float* dst;
  Bf16Bits* rounded;
  Index ld;
  const Bf16Bits *dq, *dk, *dv;
  Index q_ld, kv_ld;
  Index M, heads, kv_heads, half;
  const std::int32_t* positions;
  const float *cos_table, *sin_table;
};
void unrotate_widen(cudaStream_t s, const UnrotateWiden& a);
// And the forward's: q's and k's heads of the fused fp32 rows x (ld apart) rotated in place,
// and every head's bf16 rounding written to `rounded` (rows ld apart: cuDNN's q/k/v copy), in
// one pass. Before RoPE, that pass adds q's, k's and v's LoRA expansions where `lora` has them
// (x += scale z B^T on branch i's columns, the bits of lora_expand's).
// Ranks above kQkvExpansionsMaxRank are not taken (the registers that a thread's four columns
// of B's values would need spill): the caller runs lora_expand first.
inline constexpr int kQkvExpansionsMaxRank = 8;
struct QkvExpansions {
  const float* z[3] = {};  // branch i's (q, k, v) z [M, rank]; null: none
  const float* b[3] = {};  // and its B [columns, rank]
  int rank = 0;            // 0: no expansion; at most kQkvExpansionsMaxRank
  float scale = 0.0f;
};
struct RotateRound {
  float* x;
  Bf16Bits* rounded;
  Index ld, M, heads, kv_heads, half;
  const std::int32_t* positions;
  const float *cos_table, *sin_table;
  QkvExpansions lora;
};
void rotate_round(cudaStream_t s, const RotateRound& a);

// bias.cu (ops/linear.hpp's linear_add_bias): x[m, j] += bias[j], rows `row_stride` apart
template <class W>
void add_bias(cudaStream_t s, float* x, Index row_stride, const W* bias, Index M, Index N);

// swiglu.cu (ops/swiglu.hpp)
void swiglu_forward(cudaStream_t s, float* dst, const float* gate_up, Index M, Index I,
                    Bf16Bits* rounded);
void swiglu_backward(cudaStream_t s, float* diff_gate_up, const float* diff_dst,
                     const float* gate_up, Index M, Index I, Bf16Bits* rounded);

// cross_entropy.cu (ops/cross_entropy.hpp): row_loss [R] (=) per-row loss (0 for ignored rows)
void cross_entropy(cudaStream_t s, float* logits, const std::int32_t* targets, double* row_loss,
                   Index R, Index V, float grad_scale, bool write_grad);

// convert.cu: dtype conversions, the finite scan, row gathers
void to_bf16(cudaStream_t s, Bf16Bits* dst, const float* src, Index n);
void round_to_bf16(cudaStream_t s, float* x, Bf16Bits* copy, Index n);  // copy may be null
// copy (null: none) receives src as it is: one pass makes both.
void widen_bf16(cudaStream_t s, float* dst, const Bf16Bits* src, Index n, Bf16Bits* copy = nullptr);
// Dense [rows, cols] bf16 into columns [0, cols) of fp32 rows dst_ld apart.
void widen_bf16_columns(cudaStream_t s, float* dst, Index dst_ld, const Bf16Bits* src, Index rows,
                        Index cols);
// first non-finite index of x[0, n) written to *first (n when none); 16-bit values are bf16.
void first_nonfinite(cudaStream_t s, const float* x, Index n, unsigned long long* first);
void first_nonfinite(cudaStream_t s, const Bf16Bits* x, Index n, unsigned long long* first);
void gather_rows(cudaStream_t s, float* dst, const float* src, const std::int32_t* rows, Index n,
                 Index D);
void scatter_rows(cudaStream_t s, float* dst, const float* src, const std::int32_t* rows, Index n,
                  Index D);

// dropout.cu (ops/lora_branch.hpp apply_dropout): dst (= or +=) drop(src), strided views
void apply_dropout(cudaStream_t s, float* dst, Index dst_rs, Index dst_cs, const float* src,
                   Index src_rs, Index src_cs, Index rows, Index cols, double p, std::uint64_t key,
                   const std::uint64_t* row_keys, bool accumulate);

// lora.cu (ops/lora_branch.hpp) for ranks 1..16 (kLoraFusedMaxRank), big matrices' rows
// big_rs apart (columns contiguous), dropout p with the row keys of DropoutMask (p 0: off);
// W(k, j) and G(k, j) at w[k wk + j wj]. Each call takes its branches (LoraBranches): one, or
// (lora_outer_expand: the backward's dA and dx) a group of up to kLoraGroupMax that share big
// (q, k and v on the norm's output; gate and up) of rank at most kLoraGroupMaxRank, read once for
// all of them, each branch's result the same bits as a call of its own:
//   lora_contract:     small_b [M, r] (=) scale drop_b(big [M, n]) W_b^T
//   lora_expand:       big [M, n] += drop_b(scale small_b [M, r] W_b)
//   lora_outer:        G_b [r, n] += scale small_b^T drop_b(big), through partial
//                      [lora_outer_scratch]
//   lora_outer_expand: lora_outer's G_b and diff [M, n] (rows diff_rs apart, not overlapping
//                      big) += drop_b(scale small_b W_b), b in order, in one pass: the same bits
//                      as lora_outer, then lora_expand on diff, branch by branch
inline constexpr int kLoraGroupMax = 3;      // ops/lora_branch.hpp's (static_assert in
inline constexpr int kLoraGroupMaxRank = 8;  // cuda_lora.cpp)
struct LoraBranches {
  int count = 0;
  const float* small[kLoraGroupMax] = {};  // expand, outer: small_b
  const float* w[kLoraGroupMax] = {};      // contract, expand: W_b
  float* out[kLoraGroupMax] = {};          // contract: small_b; outer: G_b
  std::uint64_t key[kLoraGroupMax] = {};   // each branch's dropout key
};
void lora_contract(cudaStream_t s, const LoraBranches& branches, const float* big, Index big_rs,
                   Index wk, Index wj, Index M, Index n, int rank, float scale, double p,
                   const std::uint64_t* row_keys);
void lora_expand(cudaStream_t s, float* big, Index big_rs, const LoraBranches& branches, Index wk,
                 Index wj, Index M, Index n, int rank, float scale, double p,
                 const std::uint64_t* row_keys);
Index lora_outer_scratch(Index M, Index n, int rank, int count);
void lora_outer(cudaStream_t s, const LoraBranches& branches, Index gk, Index gj, const float* big,
                Index big_rs, Index M, Index n, int rank, float scale, double p,
                const std::uint64_t* row_keys, float* partial);
void lora_outer_expand(cudaStream_t s, const LoraBranches& branches, Index gk, Index gj,
                       const float* big, Index big_rs, float* diff, Index diff_rs, Index wk,
                       Index wj, Index M, Index n, int rank, float scale, double p,
                       const std::uint64_t* row_keys, float* partial);

// attention.cu (ops/attention.hpp): causal GQA attention over segments, tiles of query rows of
// a head (forward, dQ) or key rows of a KV head (dK, dV), fp32 arithmetic; with round_operands,
// q, k, v, the probabilities and d(scores) are rounded to bf16 where the CPU's bf16 policy rounds
// its matmul operands. segment_begin/segment_length [S] and row_segment [M] on the device; lse [H,
// M].
struct AttentionGeometry {
  const std::int32_t* row_segment;     // [M] segment of each row
  const std::int32_t* segment_begin;   // [S]
  const std::int32_t* segment_length;  // [S]
  Index rows;
  Index heads, kv_heads, head_dim;
  Index window;  // Mistral's sliding window: row i sees keys (i - window, i]; 0: none
};
void attention_forward(cudaStream_t s, float* out, float* lse, const float* qkv,
                       const AttentionGeometry& g, bool round_operands);
// delta [H, M] is scratch.
void attention_backward(cudaStream_t s, float* diff_qkv, const float* diff_out, const float* qkv,
                        const float* out, const float* lse, float* delta,
                        const AttentionGeometry& g, bool round_operands);
// attention_cached.cu: generation, M new rows at positions first.. attend to keys/values
// [first + M, KV*hd].
void attention_cached(cudaStream_t s, float* out, const float* q, Index q_stride, const float* keys,
                      const float* values, Index first, Index M, Index heads, Index kv_heads,
                      Index head_dim, Index window);

}  // namespace zerolora::cuda
