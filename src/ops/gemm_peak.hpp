// The bf16 GEMM rate this machine reaches now (bf16 inputs, fp32 accumulation and output),
// the best of `repetitions` n x n x n products through zerolora's matmul: the denominator of
// every MFU figure.
#pragma once

#include "core/runtime.hpp"
#include "ops/conventions.hpp"

namespace zerolora {

double measure_bf16_gemm_gflops(Runtime& rt, Index n = 2048, int repetitions = 10);

}  // namespace zerolora
