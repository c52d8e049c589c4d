// The GEMM rate this machine reaches now with operands of type In (bf16 or float; fp32
// accumulation and output), the best of `repetitions` n x n x n products through zerolora's
// matmul: the denominator of every MFU figure, in the precision the run computes in.
#pragma once

#include "core/runtime.hpp"
#include "ops/conventions.hpp"

namespace zerolora {

template <class In>
double measure_gemm_gflops(Runtime& rt, Index n = 2048, int repetitions = 10);

}  // namespace zerolora
