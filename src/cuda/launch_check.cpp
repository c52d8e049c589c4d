#include <string>

#include "core/error.hpp"
#include "cuda/cuda_ops.hpp"

namespace zerolora::cuda {

void check_launch(const char* kernel, Index rows, Index cols) {
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess)
    throw DeviceError(std::string("CUDA kernel ") + kernel + " [" + std::to_string(rows) + ", " +
                      std::to_string(cols) + "] failed: " + cudaGetErrorName(status) + ": " +
                      cudaGetErrorString(status));
}

void refuse_launch(const char* kernel, const char* why) {
  throw DeviceError(std::string("CUDA kernel ") + kernel + " not launched: " + why);
}

}  // namespace zerolora::cuda
