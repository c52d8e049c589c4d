#include "cuda/cuda_device.hpp"

#include <dlfcn.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "cuda/cuda_ops.hpp"
#include "cuda/gemm.hpp"
#include "cuda/nccl_communicator.hpp"
#ifdef ZEROLORA_CUDNN
#include "cuda/cudnn_attention.hpp"
#endif

namespace zerolora::cuda {
namespace {

// ZEROLORA_NO_CUDA_MEMORY_CACHING=1 (as PyTorch's PYTORCH_NO_CUDA_MEMORY_CACHING): every buffer
// its own cudaMalloc of its exact size, freed at once, so that compute-sanitizer's memcheck sees
// a kernel's or a library's access past a buffer's end (the GPU check runs it so). Slow: each
// cudaFree waits for the device.
CachingAllocator::Caching memory_caching() {
  const char* value = std::getenv("ZEROLORA_NO_CUDA_MEMORY_CACHING");
  return value && *value && std::string(value) != "0" ? CachingAllocator::Caching::off
                                                      : CachingAllocator::Caching::on;
}

}  // namespace

void check_cuda(cudaError_t status, const char* call) {
  if (status != cudaSuccess)
    throw DeviceError(std::string(call) + " failed: " + cudaGetErrorName(status) + ": " +
                      cudaGetErrorString(status));
}

int visible_gpus(std::string* why_none) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error of a failed probe
    if (why_none)
      *why_none = std::string("no CUDA device: cudaGetDeviceCount says ") +
                  cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")";
    return 0;
  }
  if (count == 0 && why_none) *why_none = "no CUDA device: the driver reports 0 GPUs";
  return count;
}

std::string gpu_shortfall(const cudaDeviceProp& props) {
  if (props.major >= 8) return "";
  return "compute capability " + std::to_string(props.major) + "." + std::to_string(props.minor) +
         ": the CUDA backend needs 8.0 or newer (Ampere, Ada, Hopper or later)";
}

bool library_version(void* library, const std::string& name, const char* symbol,
                     std::string* version_or_why) {
  using GetVersion = std::size_t (*)();
  const auto get_version = reinterpret_cast<GetVersion>(dlsym(library, symbol));
  if (!get_version) {
    *version_or_why = name + " has no " + symbol;
    return false;
  }
  const std::size_t v = get_version();
  *version_or_why = std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
                    std::to_string(v % 100) + " (" + name + ")";
  return true;
}

GpuSummary gpu_summary(int ordinal) {
  cudaDeviceProp props{};
  GpuSummary gpu;
  if (const cudaError_t status = cudaGetDeviceProperties(&props, ordinal); status != cudaSuccess) {
    cudaGetLastError();  // not sticky: a CPU run that asks goes on
    gpu.name = "(properties unreadable)";
    gpu.shortfall = std::string("cudaGetDeviceProperties failed: ") + cudaGetErrorName(status);
    return gpu;
  }
  gpu.name = props.name;
  gpu.major = props.major;
  gpu.minor = props.minor;
  gpu.memory_bytes = static_cast<double>(props.totalGlobalMem);
  gpu.shortfall = gpu_shortfall(props);
  return gpu;
}

std::vector<LibraryStatus> cuda_libraries() {
  std::vector<LibraryStatus> libraries(3);
  libraries[0].name = "cuBLASLt";
  libraries[0].loads = cublaslt_loadable(&libraries[0].version_or_why);
  libraries[1].name = "cuDNN";
#ifdef ZEROLORA_CUDNN
  libraries[1].loads = cudnn_loadable(&libraries[1].version_or_why);
#else
  libraries[1].version_or_why = "not used by this build (no cuDNN frontend headers at build time)";
#endif
  libraries[2].name = "NCCL";
  libraries[2].loads = nccl_loadable(&libraries[2].version_or_why);
  return libraries;
}

CudaDevice::CudaDevice(int ordinal) : ordinal_(ordinal) {
  std::string why;
  const int count = visible_gpus(&why);
  if (count == 0) throw DeviceError("--device cuda:" + std::to_string(ordinal) + ": " + why);
  if (ordinal < 0 || ordinal >= count)
    throw DeviceError("--device cuda:" + std::to_string(ordinal) + ": only " +
                      std::to_string(count) + " GPU(s) visible (CUDA_VISIBLE_DEVICES)");
  check_cuda(cudaSetDevice(ordinal), "cudaSetDevice");
  cudaDeviceProp props{};
  check_cuda(cudaGetDeviceProperties(&props, ordinal), "cudaGetDeviceProperties");
  name_ = "cuda:" + std::to_string(ordinal) + " (" + props.name + ")";
  if (const std::string why = gpu_shortfall(props); !why.empty())
    throw DeviceError("--device " + name_ + ": " + why);
  if (const std::string why = missing_kernel_image(props); !why.empty())
    throw DeviceError("--device " + name_ + ": " + why);
  for (const char byte : props.uuid.bytes) {
    constexpr char kHex[] = "0123456789abcdef";
    const auto v = static_cast<unsigned char>(byte);
    uuid_ += kHex[v >> 4];
    uuid_ += kHex[v & 15];
  }
  check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  allocator_ = std::make_unique<CachingAllocator>(
      name_,
      [](std::size_t bytes) -> void* {
        void* p = nullptr;
        if (cudaMalloc(&p, bytes) != cudaSuccess) {
          cudaGetLastError();  // out of memory is not sticky: clear it and report null
          return nullptr;
        }
        return p;
      },
      [](void* p) { cudaFree(p); }, memory_caching());
}

namespace {

// A pool of timing events, recorded on the stream at each scope's start and end and read back
// at collect(), after which the pool is reused: nothing waits inside a step.
class CudaClock final : public DeviceClock {
 public:
  explicit CudaClock(cudaStream_t stream) : stream_(stream) {}
  ~CudaClock() override {
    for (cudaEvent_t event : events_) cudaEventDestroy(event);
  }
  void mark_start() override { start_ = record(); }
  void mark_end(ProfileCategory category, StepPart part) override {
    scopes_.push_back({start_, record(), category, part});
  }
  void collect(ProfileSeconds& seconds) override {
    if (used_ > 0)
      check_cuda(cudaEventSynchronize(events_[used_ - 1]), "cudaEventSynchronize (profiler)");
    for (const Scope& scope : scopes_) {
      float ms = 0;
      check_cuda(cudaEventElapsedTime(&ms, events_[scope.start], events_[scope.end]),
                 "cudaEventElapsedTime (profiler)");
      seconds[static_cast<int>(scope.part)][static_cast<int>(scope.category)] += ms / 1e3;
    }
    scopes_.clear();
    used_ = 0;
  }

 private:
  struct Scope {
    std::size_t start, end;
    ProfileCategory category;
    StepPart part;
  };
  std::size_t record() {
    if (used_ == events_.size()) {
      cudaEvent_t event = nullptr;
      check_cuda(cudaEventCreate(&event), "cudaEventCreate (profiler)");
      events_.push_back(event);
    }
    check_cuda(cudaEventRecord(events_[used_], stream_), "cudaEventRecord (profiler)");
    return used_++;
  }
  cudaStream_t stream_;
  std::vector<cudaEvent_t> events_;
  std::size_t used_ = 0, start_ = 0;
  std::vector<Scope> scopes_;
};

}  // namespace

std::unique_ptr<DeviceClock> CudaDevice::make_clock() {
  return std::make_unique<CudaClock>(stream_);
}

CudaDevice::~CudaDevice() {
  if (stream_) cudaStreamSynchronize(stream_);
  allocator_.reset();
  if (stream_) cudaStreamDestroy(stream_);
}

std::size_t CudaDevice::free_bytes() const {
  std::size_t free = 0, total = 0;
  check_cuda(cudaSetDevice(ordinal_), "cudaSetDevice");
  check_cuda(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
  return free + (allocator_->reserved_bytes() - allocator_->allocated_bytes());
}

void* CudaDevice::allocate(std::size_t bytes) {
  return allocator_->allocate(bytes);
}

void CudaDevice::free(void* pointer, std::size_t) noexcept {
  allocator_->free(pointer);
}

void CudaDevice::copy_to_device(void* dst, const void* host_src, std::size_t bytes) {
  if (bytes == 0) return;
  // From pageable memory CUDA does not promise that an async copy has read the host bytes when
  // it returns, and callers reuse or free them at once: wait for it (the copies are a layer's
  // LoRA tensors, batch geometry, staged gathers: small next to a layer's compute).
  check_cuda(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_),
             "cudaMemcpyAsync (host to device)");
  check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (after a copy to the device)");
}

void CudaDevice::copy_to_host(void* host_dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  check_cuda(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_),
             "cudaMemcpyAsync (device to host)");
  check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (after a copy to the host)");
}

void CudaDevice::copy(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return;
  check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_),
             "cudaMemcpyAsync (device to device)");
}

void CudaDevice::copy_rows(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                           std::size_t row_bytes, std::size_t rows) {
  if (rows == 0 || row_bytes == 0) return;
  check_cuda(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, row_bytes, rows,
                               cudaMemcpyDeviceToDevice, stream_),
             "cudaMemcpy2DAsync");
}

void CudaDevice::fill_zero(void* dst, std::size_t bytes) {
  if (bytes == 0) return;
  check_cuda(cudaMemsetAsync(dst, 0, bytes, stream_), "cudaMemsetAsync");
}

void CudaDevice::synchronize() {
  check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
}

}  // namespace zerolora::cuda
