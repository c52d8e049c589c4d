// Whether this build holds kernels the current GPU runs. nvcc compiles every kernel for the
// architectures CMAKE_CUDA_ARCHITECTURES names (the top CMakeLists.txt's default: sm_80 code,
// which every Ampere and Ada GPU runs, sm_90 code for Hopper, and compute_90 PTX that later GPUs
// compile when they load it). A GPU none of them serves would fail at the first kernel launch
// of a step; asked once, when the device opens, the run ends before any work, saying what to
// do. Every .cu file is compiled for the same architectures: this one's kernel stands for all.
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
  const std::string said =
      std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
  cudaGetLastError();  // not sticky: clear it, the run ends with the message below
  const std::string capability = std::to_string(props.major) + "." + std::to_string(props.minor);
  const std::string rebuild =
      "rebuild with -DCMAKE_CUDA_ARCHITECTURES=" + std::to_string(props.major) +
      std::to_string(props.minor) + " (this build's: " + ZEROLORA_CUDA_ARCHITECTURES + ")";
  switch (status) {
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorInvalidDeviceFunction:  // what some CUDA versions say instead
      return "this zerolora has no kernels for its compute capability " + capability + ": " +
             rebuild + " (cudaFuncGetAttributes: " + said + ")";
    case cudaErrorInvalidPtx:
    case cudaErrorUnsupportedPtxVersion:
    case cudaErrorJitCompilerNotFound:
      return "the driver cannot compile this zerolora's PTX for compute capability " + capability +
             ": update the NVIDIA driver, or " + rebuild + " (cudaFuncGetAttributes: " + said + ")";
    default:
      return "cudaFuncGetAttributes failed: " + said;
  }
}

std::string cuda_build_summary() {
#ifdef ZEROLORA_CUDNN
  const char* attention = "cuDNN fused attention";
#else
  const char* attention = "own attention kernel only (built without cuDNN's frontend headers)";
#endif
  return std::string("architectures ") + ZEROLORA_CUDA_ARCHITECTURES + "; " + attention;
}

}  // namespace zerolora::cuda
