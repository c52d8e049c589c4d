// SwiGLU activation of the Llama MLP: dst = silu(gate) * up, silu(g) = g * sigmoid(g).
// gate and up are the two halves of one fused [M, 2I] projection output (gate first).
#pragma once

#include "core/runtime.hpp"
#include "ops/conventions.hpp"

namespace zerolora {

template <class T>
void swiglu_forward(Runtime& rt, T* dst /*[M, I]*/, const T* gate_up /*[M, 2I]*/, Index M, Index I);

// diff_gate_up (=): d gate = dy * up * s * (1 + g * (1 - s)), d up = dy * silu(g), s = sigmoid(g).
template <class T>
void swiglu_backward(Runtime& rt, T* diff_gate_up /*[M, 2I]*/, const T* diff_dst /*[M, I]*/,
                     const T* gate_up /*[M, 2I]*/, Index M, Index I);

}  // namespace zerolora
