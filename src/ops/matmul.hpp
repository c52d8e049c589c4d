// Matrix multiply, the one entry point every GEMM in zerolora goes through:
//   c = alpha * a * b            (accumulate == false)
//   c = alpha * a * b + c        (accumulate == true)
// a: [M, K], b: [K, N], c: [M, N] (c.cs must be 1). Operand types In in {float, bf16, double},
// result type Out in {float, double}; accumulation is at least fp32.
// float/bf16 run through oneDNN (primitives cached in the Runtime); double and very small
// products run a plain loop (doubles are for finite-difference checks only).
// Callable from inside an OpenMP parallel region: each thread uses its own stream and
// scratchpad, and oneDNN then runs single-threaded.
#pragma once

#include <string>

#include "core/bf16.hpp"
#include "core/runtime.hpp"
#include "ops/matrix.hpp"

namespace zerolora {

template <class In, class Out>
void matmul(Runtime& rt, Mat<const In> a, Mat<const In> b, Mat<Out> c, double alpha = 1.0,
            bool accumulate = false);

// Throws UnsupportedError, saying what to do instead, when this CPU has no bf16 matmul in
// oneDNN (oneDNN 2.x implements it with AVX-512 only): a bf16 run checks before it starts.
void require_bf16_matmul(Runtime& rt);

// oneDNN's version as loaded ("2.6.3").
std::string onednn_version();

}  // namespace zerolora
