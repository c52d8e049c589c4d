// The CUDA emulator's runtime (libzerolora_cuda_emulator.so, with kernels.cpp): emulated GPUs
// (one, or ZEROLORA_EMULATED_GPUS) whose memory is host memory, with the checks a real GPU
// would make fatal and a test would otherwise miss.
//   - Memory: every cudaMalloc is recorded; copies, fills, GEMM operands and kernel pointer
//     arguments must lie in one live allocation (device side) or outside all of them (host
//     side). New allocations are filled with 0xff bytes (NaN as fp32), so a kernel that reads
//     memory nobody wrote shows it. Overlapping copies are refused (undefined in CUDA). Under
//     AddressSanitizer (the kernels built with it: zerolora_cuda_asan_tests), the bytes past an
//     allocation's size, up to its 256-byte rounding, are poisoned: any access past a buffer
//     is reported, naming the kernel.
//   - Copies and fills run on their stream (streams.cpp), after its earlier work; a copy from
//     host memory takes its bytes at the call, a copy into host memory returns once done (both
//     as for CUDA's pageable host memory). cudaFree waits for the device, as CUDA's does.
//   - Errors are CUDA's: the call returns the error, cudaGetLastError returns it once, and
//     cudaGetErrorString gives the emulator's description of what went wrong. An error in work
//     a stream ran stays, returned by every synchronisation, as a GPU's fault does.
// The CUDA runtime is process-wide state, so the emulator's is too (one mutex guards it; the
// last error and the current device are the process's, not each host thread's).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_runtime.h"
#include "emulator_state.hpp"

// AddressSanitizer's interface, present when an executable is linked with it.
extern "C" void __asan_poison_memory_region(void const volatile* address, std::size_t bytes)
    __attribute__((weak));
extern "C" void __asan_unpoison_memory_region(void const volatile* address, std::size_t bytes)
    __attribute__((weak));

namespace zerolora::cuda_emulator {
namespace {

constexpr std::size_t kAllocationAlignment = 256;  // what cudaMalloc guarantees

// The emulated GPU's memory: 16 GiB, or ZEROLORA_EMULATED_GPU_MIB (a test of what depends on
// the free memory, such as recompute auto's budget on a GPU, gives a small one).
std::size_t emulated_device_bytes() {
  const char* mib = std::getenv("ZEROLORA_EMULATED_GPU_MIB");
  const long long given = mib ? std::atoll(mib) : 0;
  return given > 0 ? static_cast<std::size_t>(given) << 20 : std::size_t{16} << 30;
}

struct Runtime {
  std::mutex mutex;
  std::map<std::uintptr_t, std::size_t> allocations;  // base -> bytes
  std::size_t allocated = 0;
  const std::size_t device_bytes = emulated_device_bytes();
  int current_device = 0;
  cudaError_t last_error = cudaSuccess;
  std::string last_message;
  cudaError_t sticky = cudaSuccess;
};

Runtime& runtime() {
  static Runtime instance;
  return instance;
}

// What an allocation of `bytes` takes: cudaMalloc's alignment.
std::size_t rounded_size(std::size_t bytes) {
  return (std::max<std::size_t>(bytes, 1) + kAllocationAlignment - 1) / kAllocationAlignment *
         kAllocationAlignment;
}

}  // namespace

cudaError_t fail(cudaError_t error, const std::string& message) {
  Runtime& rt = runtime();
  std::lock_guard lock(rt.mutex);
  rt.last_error = error;
  rt.last_message = "CUDA emulator: " + message;
  return error;
}

void fail_in_stream(cudaError_t error, const std::string& message) {
  Runtime& rt = runtime();
  std::lock_guard lock(rt.mutex);
  rt.last_error = rt.sticky = error;
  rt.last_message = "CUDA emulator: " + message;
}

cudaError_t sticky_error() {
  Runtime& rt = runtime();
  std::lock_guard lock(rt.mutex);
  return rt.sticky;
}

std::string describe(const void* pointer, std::size_t bytes) {
  char text[96];
  std::snprintf(text, sizeof text, "[%p, +%zu bytes)", pointer, bytes);
  return text;
}

int device_range(const void* pointer, std::size_t bytes) {
  Runtime& rt = runtime();
  std::lock_guard lock(rt.mutex);
  const auto address = reinterpret_cast<std::uintptr_t>(pointer);
  auto it = rt.allocations.upper_bound(address);
  if (it == rt.allocations.begin()) return 0;
  --it;
  if (address >= it->first + it->second) return 0;
  return address + bytes <= it->first + it->second ? 1 : -1;
}

namespace {

cudaError_t check_device(const void* pointer, std::size_t bytes, const char* call,
                         const char* what) {
  if (bytes == 0) return cudaSuccess;
  const int where = device_range(pointer, bytes);
  if (where == 1) return cudaSuccess;
  return fail(cudaErrorInvalidValue,
              std::string(call) + ": the " + what + " " + describe(pointer, bytes) +
                  (where == 0 ? " is not device memory" : " runs past the end of its allocation"));
}

cudaError_t check_host(const void* pointer, std::size_t bytes, const char* call, const char* what) {
  if (bytes == 0 || device_range(pointer, 1) == 0) return cudaSuccess;
  return fail(cudaErrorInvalidValue, std::string(call) + ": the " + what + " " +
                                         describe(pointer, bytes) +
                                         " is device memory, but the copy's kind says host");
}

// A copy's two sides, each over its own extent (a 2D copy's pitches differ), and, as CUDA's
// copies are undefined for overlapping ranges, apart.
cudaError_t check_copy(void* dst, std::size_t dst_bytes, const void* src, std::size_t src_bytes,
                       cudaMemcpyKind kind, const char* call) {
  const bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (kind == cudaMemcpyDefault || kind == cudaMemcpyHostToHost)
    return fail(cudaErrorInvalidValue, std::string(call) + ": the backend names every copy's kind");
  cudaError_t status = dst_device ? check_device(dst, dst_bytes, call, "destination")
                                  : check_host(dst, dst_bytes, call, "destination");
  if (status == cudaSuccess)
    status = src_device ? check_device(src, src_bytes, call, "source")
                        : check_host(src, src_bytes, call, "source");
  const auto d = reinterpret_cast<std::uintptr_t>(dst), s = reinterpret_cast<std::uintptr_t>(src);
  if (status == cudaSuccess && dst_bytes && src_bytes && d < s + src_bytes && s < d + dst_bytes)
    status = fail(cudaErrorInvalidValue, std::string(call) + ": the source " +
                                             describe(src, src_bytes) + " and the destination " +
                                             describe(dst, dst_bytes) + " overlap");
  return status;
}

}  // namespace
}  // namespace zerolora::cuda_emulator

using namespace zerolora::cuda_emulator;

extern "C" {

// ---- device and errors ------------------------------------------------------------------------

// ZEROLORA_EMULATED_GPUS (default 1) GPUs, each with its own UUID; CUDA_VISIBLE_DEVICES=""
// (or -1) hides them, as it hides real ones. Their memory is one pool.
cudaError_t cudaGetDeviceCount(int* count) {
  const char* visible = std::getenv("CUDA_VISIBLE_DEVICES");
  const bool hidden = visible && (visible[0] == '\0' || visible[0] == '-');
  const char* gpus = std::getenv("ZEROLORA_EMULATED_GPUS");
  *count = hidden ? 0 : gpus ? std::max(1, std::atoi(gpus)) : 1;
  if (hidden) return fail(cudaErrorNoDevice, "CUDA_VISIBLE_DEVICES hides the emulated GPUs");
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count)
    return fail(cudaErrorInvalidDevice, "cudaSetDevice(" + std::to_string(device) +
                                            "): " + std::to_string(count) + " emulated GPU(s)");
  runtime().current_device = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  *device = runtime().current_device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || device < 0 || device >= count)
    return fail(cudaErrorInvalidDevice, "cudaGetDeviceProperties: no such GPU");
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "zerolora CUDA emulator on the CPU");
  std::memcpy(prop->uuid.bytes, "zerolora-emu-gpu", 16);
  prop->uuid.bytes[15] = static_cast<char>('0' + device % 64);
  prop->totalGlobalMem = runtime().device_bytes;
  // Hopper, or ZEROLORA_EMULATED_GPU_CAPABILITY ("7.5": a GPU the backend refuses; "7.5,9.0":
  // GPU i takes the list's entry i, the last one those beyond it).
  prop->major = 9;
  prop->minor = 0;
  if (const char* capability = std::getenv("ZEROLORA_EMULATED_GPU_CAPABILITY")) {
    for (int i = 0; i < device; ++i)
      if (const char* next = std::strchr(capability, ',')) capability = next + 1;
    std::sscanf(capability, "%d.%d", &prop->major, &prop->minor);
  }
  prop->multiProcessorCount = 132;
  prop->maxThreadsPerBlock = 1024;
  prop->maxGridSize[0] = 2147483647;
  prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
  prop->warpSize = 32;
  return cudaSuccess;
}

cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, const void* function) {
  if (!function) return fail(cudaErrorInvalidValue, "cudaFuncGetAttributes: no function");
  const char* none = std::getenv("ZEROLORA_EMULATED_NO_KERNEL_IMAGE");
  if (none && std::string(none) == "ptx")  // only PTX, which the driver is too old to compile
    return fail(cudaErrorUnsupportedPtxVersion,
                "the provided PTX was compiled with an unsupported toolchain "
                "(ZEROLORA_EMULATED_NO_KERNEL_IMAGE=ptx)");
  if (none && *none && std::string(none) != "0")
    return fail(cudaErrorNoKernelImageForDevice,
                "no kernel image is available for execution on the device "
                "(ZEROLORA_EMULATED_NO_KERNEL_IMAGE)");
  *attributes = cudaFuncAttributes{1024, 32, 0, 0};
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(std::size_t* free, std::size_t* total) {
  Runtime& rt = runtime();
  std::lock_guard lock(rt.mutex);
  *total = rt.device_bytes;
  *free = rt.device_bytes - rt.allocated;
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  Runtime& rt = runtime();
  std::lock_guard lock(rt.mutex);
  const cudaError_t e = rt.last_error;
  rt.last_error = rt.sticky;
  return e;
}

cudaError_t cudaPeekAtLastError(void) {
  Runtime& rt = runtime();
  std::lock_guard lock(rt.mutex);
  return rt.last_error;
}

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice:
      return "cudaErrorNoDevice";
    case cudaErrorInvalidDeviceFunction:
      return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoKernelImageForDevice:
      return "cudaErrorNoKernelImageForDevice";
    case cudaErrorInvalidPtx:
      return "cudaErrorInvalidPtx";
    case cudaErrorJitCompilerNotFound:
      return "cudaErrorJitCompilerNotFound";
    case cudaErrorUnsupportedPtxVersion:
      return "cudaErrorUnsupportedPtxVersion";
    case cudaErrorInvalidResourceHandle:
      return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady:
      return "cudaErrorNotReady";
    case cudaErrorIllegalAddress:
      return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure:
      return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}

// The emulator's description of the last error (valid until the next error).
const char* cudaGetErrorString(cudaError_t error) {
  if (error == cudaSuccess) return "no error";
  Runtime& rt = runtime();
  std::lock_guard lock(rt.mutex);
  return rt.last_message.c_str();
}

// ---- memory ---------------------------------------------------------------------------------

cudaError_t cudaMalloc(void** pointer, std::size_t bytes) {
  *pointer = nullptr;
  const std::size_t rounded = rounded_size(bytes);
  bool fits = false;
  {
    Runtime& rt = runtime();
    std::lock_guard lock(rt.mutex);
    fits = rounded <= rt.device_bytes - rt.allocated;
  }
  if (!fits)
    return fail(cudaErrorMemoryAllocation, "cudaMalloc of " + std::to_string(bytes) +
                                               " bytes: out of the emulated GPU's memory");
  void* p = std::aligned_alloc(kAllocationAlignment, rounded);
  if (!p) return fail(cudaErrorMemoryAllocation, "cudaMalloc: the host has no memory left");
  std::memset(p, 0xff, rounded);
  if (__asan_poison_memory_region && rounded > bytes)
    __asan_poison_memory_region(static_cast<char*>(p) + bytes, rounded - bytes);
  Runtime& rt = runtime();
  std::lock_guard lock(rt.mutex);
  rt.allocations[reinterpret_cast<std::uintptr_t>(p)] = bytes;
  rt.allocated += rounded;
  *pointer = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* pointer) {
  if (!pointer) return cudaSuccess;
  wait_for_device();
  {
    Runtime& rt = runtime();
    std::lock_guard lock(rt.mutex);
    const auto it = rt.allocations.find(reinterpret_cast<std::uintptr_t>(pointer));
    if (it != rt.allocations.end()) {
      rt.allocated -= rounded_size(it->second);
      if (__asan_unpoison_memory_region)
        __asan_unpoison_memory_region(pointer, rounded_size(it->second));
      rt.allocations.erase(it);
      std::free(pointer);
      return cudaSuccess;
    }
  }
  return fail(cudaErrorInvalidValue,
              "cudaFree of " + describe(pointer, 0) + ", which cudaMalloc did not return");
}

cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
  const cudaError_t status = check_copy(dst, bytes, src, bytes, kind, "cudaMemcpy");
  if (status != cudaSuccess) return status;
  wait_for_device();
  if (bytes) std::memcpy(dst, src, bytes);
  return sticky_error();
}

namespace {

// A copy of `rows` rows of `width` bytes on `stream`. Host memory is pageable here: a source
// there is read now (the caller may reuse it at once), and a destination there is written
// before the call returns.
cudaError_t copy_on_stream(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                           std::size_t width, std::size_t rows, cudaMemcpyKind kind,
                           cudaStream_t stream) {
  std::shared_ptr<std::vector<char>> staged;
  if (kind == cudaMemcpyHostToDevice) {
    staged = std::make_shared<std::vector<char>>(width * rows);
    for (std::size_t r = 0; r < rows; ++r)
      std::memcpy(staged->data() + r * width, static_cast<const char*>(src) + r * src_pitch, width);
    src = staged->data();
    src_pitch = width;
  }
  enqueue(stream, [=, staged = std::move(staged)] {
    for (std::size_t r = 0; r < rows; ++r)
      std::memcpy(static_cast<char*>(dst) + r * dst_pitch,
                  static_cast<const char*>(src) + r * src_pitch, width);
  });
  if (kind == cudaMemcpyDeviceToHost) {
    wait_for_stream(stream);
    return sticky_error();
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  const cudaError_t status = check_copy(dst, bytes, src, bytes, kind, "cudaMemcpyAsync");
  if (status != cudaSuccess || bytes == 0) return status;
  return copy_on_stream(dst, bytes, src, bytes, bytes, 1, kind, stream);
}

cudaError_t cudaMemcpy2DAsync(void* dst, std::size_t dst_pitch, const void* src,
                              std::size_t src_pitch, std::size_t width, std::size_t height,
                              cudaMemcpyKind kind, cudaStream_t stream) {
  if (height == 0 || width == 0) return cudaSuccess;
  if (dst_pitch < width || src_pitch < width)
    return fail(cudaErrorInvalidValue, "cudaMemcpy2DAsync: a pitch is less than the width");
  const cudaError_t status =
      check_copy(dst, dst_pitch * (height - 1) + width, src, src_pitch * (height - 1) + width, kind,
                 "cudaMemcpy2DAsync");
  if (status != cudaSuccess) return status;
  return copy_on_stream(dst, dst_pitch, src, src_pitch, width, height, kind, stream);
}

cudaError_t cudaMemsetAsync(void* dst, int value, std::size_t bytes, cudaStream_t stream) {
  const cudaError_t status = check_device(dst, bytes, "cudaMemsetAsync", "destination");
  if (status == cudaSuccess && bytes) enqueue(stream, [=] { std::memset(dst, value, bytes); });
  return status;
}

cudaError_t cudaMemset2DAsync(void* dst, std::size_t pitch, int value, std::size_t width,
                              std::size_t height, cudaStream_t stream) {
  if (height == 0 || width == 0) return cudaSuccess;
  if (pitch < width)
    return fail(cudaErrorInvalidValue, "cudaMemset2DAsync: the pitch is less than the width");
  const cudaError_t status =
      check_device(dst, pitch * (height - 1) + width, "cudaMemset2DAsync", "destination");
  if (status != cudaSuccess) return status;
  enqueue(stream, [=] {
    for (std::size_t r = 0; r < height; ++r)
      std::memset(static_cast<char*>(dst) + r * pitch, value, width);
  });
  return cudaSuccess;
}

int zl_emu_check_kernel_pointer(const void* pointer, int argument) {
  if (!pointer || device_range(pointer, 1) == 1) return 1;
  fail(cudaErrorIllegalAddress, "kernel argument " + std::to_string(argument) + " (" +
                                    describe(pointer, 0) + ") is not device memory");
  return 0;
}

int zl_emu_is_device_range(const void* pointer, std::size_t bytes) {
  return device_range(pointer, bytes) == 1;
}

}  // extern "C"
