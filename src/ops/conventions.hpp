// Conventions shared by every op in src/ops (read this first).
//
// [Note: gradient rule]
//   * Parameter gradients ACCUMULATE (+=): LoRA grads sum over micro-batches and ranks.
//   * Activation gradients are WRITTEN (=), except the residual stream, whose gradient
//     accumulates (+=) because two branches (the skip and the block) feed it.
//   Each backward function says which of its outputs follow which rule.
//
// [Note: argument order]
//   Outputs first, then inputs, then sizes (as llm.c): forward(dst, saved..., src, weights,
//   sizes); backward(diff_src, diff_weights..., diff_dst, saved..., src, weights, sizes).
//   Every pointer carries a shape comment, rows first: // [M, D] = M tokens by D features.
//
// [Note: precision policies]
//   Kernels are templates over the activation type (float, or double for finite-difference
//   checks) and the matmul operand type (float, bf16, double). Activations are always at
//   least fp32; bf16 mode only rounds matmul operands to bf16, with fp32 accumulation.
#pragma once

#include "core/types.hpp"
