// Choosing the backend: the device a run asks for (--device cpu | cuda | cuda:N) and the kernel
// set for the runtime's device. CpuKernels on the CPU; on a CUDA device the CUDA backend's
// kernels (builds with ZEROLORA_CUDA), which serve the fp32 and bf16 policies.
#pragma once

#include <memory>
#include <string>

#include "core/device.hpp"
#include "core/runtime.hpp"
#include "ops/kernels.hpp"

namespace zerolora {

// The device named by `spec`: "cpu" gives null (the runtime's host device); "cuda" is GPU 0.
// Throws UsageError for another spelling, UnsupportedError when this build has no CUDA, and
// DeviceError when the GPU is not there.
std::unique_ptr<Device> make_device(const std::string& spec);

// The GPU index of --device `spec`: N for cuda:N, -1 for plain cuda (GPU 0 alone; a rank's
// local rank under a launcher: zero3/run_device.hpp). UsageError for another spelling.
int cuda_ordinal(const std::string& spec);

// Throws UnsupportedError when this build or this policy has no kernels for the device.
template <class P>
std::unique_ptr<Kernels<P>> make_kernels(Runtime& rt);

// The dense GEMM rate of the runtime's device for the policy's operands (the denominator of
// MFU): oneDNN's on the CPU (ops/gemm_peak.hpp); on another device its kernels' base
// projection, n x n x n, the best of `repetitions`, timed to completion.
template <class P>
double measure_device_gemm_gflops(Runtime& rt, Index n, int repetitions);

}  // namespace zerolora
