// The kernel interface (ops/kernels.hpp) on a CUDA GPU, for the fp32 and bf16 policies: the
// hand-written kernels of cuda_ops.hpp for the memory-bound ops, cuBLASLt (gemm.hpp) for every
// GEMM, the LoRA branch's fused kernels through cuda_lora.hpp, and cuDNN's or attention.cu's
// attention. Host-side values the kernels need (the rope table, the segments of a batch) are
// uploaded when they change.
#pragma once

#include <memory>

#include "core/runtime.hpp"
#include "ops/kernels.hpp"

namespace zerolora::cuda {

// Throws UnsupportedError for a policy the backend has no kernels for (fp64), DeviceError when
// the runtime's device is not a CUDA GPU.
template <class P>
std::unique_ptr<Kernels<P>> make_cuda_kernels(Runtime& rt);

}  // namespace zerolora::cuda
