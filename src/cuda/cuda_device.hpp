// One CUDA GPU as a zerolora Device: its own stream (every copy and kernel of the backend is
// ordered on it), device memory from a CachingAllocator over cudaMalloc (nothing is allocated
// from the driver in a step once the first step has run), and the run's peak memory.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <vector>

#include "core/caching_allocator.hpp"
#include "core/device.hpp"

namespace zerolora::cuda {

class CudaDevice final : public Device {
 public:
  // Selects GPU `ordinal` (of those CUDA_VISIBLE_DEVICES shows); throws DeviceError when there
  // is none, naming what CUDA said, or when it cannot train here (gpu_shortfall; no kernels in
  // this build for it: missing_kernel_image, cuda_ops.hpp).
  explicit CudaDevice(int ordinal);
  ~CudaDevice() override;

  DeviceKind kind() const override { return DeviceKind::kCuda; }
  std::string name() const override { return name_; }
  bool host_accessible() const override { return false; }
  void* allocate(std::size_t bytes) override;
  void free(void* pointer, std::size_t bytes) noexcept override;
  void copy_to_device(void* dst, const void* host_src, std::size_t bytes) override;
  void copy_to_host(void* host_dst, const void* src, std::size_t bytes) override;
  void copy(void* dst, const void* src, std::size_t bytes) override;
  void copy_rows(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                 std::size_t row_bytes, std::size_t rows) override;
  void fill_zero(void* dst, std::size_t bytes) override;
  void synchronize() override;
  std::size_t allocated_bytes() const override { return allocator_->allocated_bytes(); }
  std::size_t peak_allocated_bytes() const override { return allocator_->peak_allocated_bytes(); }
  void reset_peak() override { allocator_->reset_peak(); }
  // CUDA events on the stream around each profiled scope.
  std::unique_ptr<DeviceClock> make_clock() override;

  // What the GPU can still give this process: the driver's free memory (cudaMemGetInfo; other
  // processes' use already taken off) and the blocks this device's allocator caches unused.
  std::size_t free_bytes() const;

  cudaStream_t stream() const { return stream_; }
  int ordinal() const { return ordinal_; }
  // The GPU's UUID in hex: the same physical GPU whatever CUDA_VISIBLE_DEVICES numbers it.
  const std::string& uuid() const { return uuid_; }

 private:
  int ordinal_;
  std::string name_, uuid_;
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<CachingAllocator> allocator_;
};

// Throws DeviceError naming the call and what CUDA said.
void check_cuda(cudaError_t status, const char* call);

// GPUs this process can see (0 when there is no driver or no GPU) and, when none, why.
int visible_gpus(std::string* why_none = nullptr);

// Why the GPU of these properties cannot train with the CUDA backend, or "" where it can: a
// compute capability below 8.0 (the bf16 kernels and cuDNN's fused attention need Ampere or
// later; the build holds no code for older GPUs).
std::string gpu_shortfall(const cudaDeviceProp& props);

// The version of the loaded library `name` from its function `symbol`, which returns
// major * 10000 + minor * 100 + patch (cuBLASLt's, cuDNN's): "13.1.0 (libcublasLt.so.13)" into
// version_or_why and true, or that the library lacks the function and false.
bool library_version(void* library, const std::string& name, const char* symbol,
                     std::string* version_or_why);

// Visible GPU `ordinal` from its properties alone (no CUDA context made; a GPU whose properties
// cannot be read falls short, and nothing is thrown).
struct GpuSummary {
  std::string name;
  int major = 0, minor = 0;
  double memory_bytes = 0;
  std::string shortfall;  // gpu_shortfall: "" where it can train
};
GpuSummary gpu_summary(int ordinal);

// A library the CUDA backend loads at run time: whether it loads here, and its version or why
// not.
struct LibraryStatus {
  std::string name;
  bool loads = false;
  std::string version_or_why;
};
// cuBLASLt, cuDNN (builds with its fused attention) and NCCL.
std::vector<LibraryStatus> cuda_libraries();

}  // namespace zerolora::cuda
