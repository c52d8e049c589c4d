// Whether this build holds kernels the current GPU runs. nvcc compiles every kernel for the
// architectures CMAKE_CUDA_ARCHITECTURES names (src/CMakeLists.txt's default: sm_80 code, which
// every Ampere and Ada GPU runs, sm_90 code for Hopper, and compute_90 PTX that later GPUs
// compile when they load it). A GPU none of them serves would fail at the first kernel launch
// of a step with cudaErrorNoKernelImageForDevice; asked once, when the device opens, the run
// ends before any work with how to rebuild.
#include <string>

#include "cuda/cuda_ops.hpp"

#ifndef ZEROLORA_CUDA_ARCHITECTURES
#define ZEROLORA_CUDA_ARCHITECTURES "unknown"
#endif

namespace zerolora::cuda {
namespace {

__global__ void kernel_image_probe() {}

}  // namespace

std::string missing_kernel_image(const cudaDeviceProp& props) {
  cudaFuncAttributes attributes{};
  const cudaError_t status = cudaFuncGetAttributes(&attributes, kernel_image_probe);
  if (status == cudaSuccess) return "";
  cudaGetLastError();  // not sticky: clear it, the run ends with the message below
  const std::string capability = std::to_string(props.major) + "." + std::to_string(props.minor);
  return "this zerolora has no kernels for its compute capability " + capability +
         " (built for CMAKE_CUDA_ARCHITECTURES " + ZEROLORA_CUDA_ARCHITECTURES +
         "): rebuild with -DCMAKE_CUDA_ARCHITECTURES=" + std::to_string(props.major) +
         std::to_string(props.minor) + " (cudaFuncGetAttributes: " + cudaGetErrorName(status) + ")";
}

}  // namespace zerolora::cuda
