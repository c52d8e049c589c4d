// The CUDA emulator's stand-in for <cuda_runtime.h>: the part of the CUDA runtime API and of
// CUDA C++'s device language that src/cuda uses, so that the backend's own sources (the .cu
// kernels included) compile with the host compiler and run on the CPU. Only the emulated test
// targets put this folder on their include path, ahead of the CUDA toolkit's.
//
// What it proves: the kernels' indexing, reductions, barriers and launch shapes, the glue that
// drives them (cuda_kernels.cpp, gemm.cpp, cuda_device.cpp, nccl_communicator.cpp), and that
// every pointer a kernel, copy, GEMM or collective is given lies in device memory, all against
// the CPU engine. What it cannot show, so GPU code that only ran here is still unverified:
//   - NVIDIA's code: cuBLASLt and NCCL are emulated (their documented semantics); cuDNN is
//     compiled out (bf16 attention on a GPU goes through it), or a stand-in takes its place
//     (cudnn_standin.cpp), which checks cudnn_attention.hpp's contract and runs the glue
//     around it, but not cuDNN's graphs, kernels, rounding or limits.
//   - Concurrency: blocks run one at a time, a block's warps one after another between its
//     barriers, a warp's lanes one after another between shuffles, in one order or its reverse
//     (ZEROLORA_EMULATED_ORDER; the tests run both). A race shows where one of the two orders
//     breaks it (lanes assumed in lockstep without __syncwarp included); one needing another
//     interleaving passes. Streams do run apart from the host and from each other, ordered
//     only by events (streams.cpp), and ZEROLORA_EMULATED_LAG delays one kind of work so that
//     a missing event shows; but one kernel runs at a time in the process.
//   - Memory: device memory is host memory (host code reading a device pointer works here);
//     out-of-bounds accesses inside kernels, and pointers inside struct arguments, go unseen;
//     range checks see the caching allocator's rounded blocks. Registers, local memory and
//     architecture images are not modelled (the real build refuses kernels that spill or use
//     local memory: src/CMakeLists.txt).
//   - Numerics: nvcc contracts a * b + c into FMA and CUDA's expf/logf are not the host's;
//     tensor-core and split-K sums, and NCCL's reduction order, are not the emulator's.
//
// The handles have the CUDA toolkit's own type names, so that objects compiled against the real
// headers (which only ever pass them through) link with the emulated ones.
#pragma once

#include <math.h>  // expf, logf, sqrtf, fmaxf, INFINITY: in the global namespace, as in CUDA

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- types --------------------------------------------------------------------------------

typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;

enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorInvalidPtx = 218,
  cudaErrorJitCompilerNotFound = 221,
  cudaErrorUnsupportedPtxVersion = 222,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchFailure = 719,
};
typedef enum cudaError cudaError_t;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
#define cudaEventDefault 0x00
#define cudaEventDisableTiming 0x02

struct CUuuid_st {
  char bytes[16];
};
typedef struct CUuuid_st cudaUUID_t;

struct cudaDeviceProp {
  char name[256];
  cudaUUID_t uuid;
  std::size_t totalGlobalMem;
  int major, minor;
  int multiProcessorCount;
  int maxThreadsPerBlock;
  int maxGridSize[3];
  int warpSize;
};

struct cudaFuncAttributes {
  int maxThreadsPerBlock;
  int numRegs;
  std::size_t sharedSizeBytes, localSizeBytes;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};
struct uint3 {
  unsigned x, y, z;
};

// ---- the runtime API (libzerolora_cuda_emulator.so) -----------------------------------------

extern "C" {
cudaError_t cudaGetDeviceCount(int* count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
// Succeeds (the emulated kernels run on any emulated GPU) unless ZEROLORA_EMULATED_NO_KERNEL_IMAGE
// is set: a build without code for the GPU's compute capability, as a real one says; "ptx": a
// build whose only code for it is PTX the driver cannot compile.
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, const void* function);
cudaError_t cudaMemGetInfo(std::size_t* free, std::size_t* total);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char* cudaGetErrorName(cudaError_t error);
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaDeviceSynchronize(void);

cudaError_t cudaMalloc(void** pointer, std::size_t bytes);
cudaError_t cudaFree(void* pointer);
cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream);
cudaError_t cudaMemcpy2DAsync(void* dst, std::size_t dst_pitch, const void* src,
                              std::size_t src_pitch, std::size_t width, std::size_t height,
                              cudaMemcpyKind kind, cudaStream_t stream);
cudaError_t cudaMemsetAsync(void* dst, int value, std::size_t bytes, cudaStream_t stream);
cudaError_t cudaMemset2DAsync(void* dst, std::size_t pitch, int value, std::size_t width,
                              std::size_t height, cudaStream_t stream);

cudaError_t cudaStreamCreate(cudaStream_t* stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags = 0);

cudaError_t cudaEventCreate(cudaEvent_t* event);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream = nullptr);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);

// ---- the emulator's own entry points (not CUDA's) ---------------------------------------------

// Where a kernel thread is: the builtins below read it.
struct ZlEmuThread {
  uint3 thread_idx, block_idx;
  dim3 block_dim, grid_dim;
};
// The running kernel thread's (null outside kernels).
extern const ZlEmuThread* zl_emu_current;
void zl_emu_syncthreads(void);
// One lane's part of a warp shuffle: its value in, lane (lane ^ lane_mask)'s value out.
void zl_emu_shfl_xor(unsigned mask, const void* value, void* out, std::size_t bytes, int lane_mask);
// Queues on `stream` a run of body(context) for every thread of the grid, one block at a time,
// each thread a fiber (barriers and shuffles switch between them), then release(context): the
// launch owns the context. A shape outside CUDA's limits is refused at once; an error while
// the kernel runs becomes the sticky error. `shared` and `shared_end` bound the calling
// program's shared-memory section.
void zl_emu_launch(dim3 grid, dim3 block, std::size_t shared_bytes, cudaStream_t stream,
                   void (*body)(void* context), void* context, void (*release)(void* context),
                   char* shared, char* shared_end);
// 1 when a kernel's pointer argument is null or device memory; otherwise 0, and the sticky
// error names the argument.
int zl_emu_check_kernel_pointer(const void* pointer, int argument);
// Whether [pointer, pointer + bytes) lies in one device allocation.
int zl_emu_is_device_range(const void* pointer, std::size_t bytes);
}

// CUDA's C++ overload, which takes the kernel itself.
template <class... Params>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attributes, void (*kernel)(Params...)) {
  return cudaFuncGetAttributes(attributes, reinterpret_cast<const void*>(kernel));
}

// ---- CUDA C++'s device language, on the host ---------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One block runs at a time, its threads as fibers of one host thread: a function-local static
// is exactly the block's shared memory. They live in one section, which the runtime fills with
// 0xff bytes before every block: on a GPU, shared memory starts as whatever was there. (GCC 12
// ignores the section attribute for the statics of function templates: the linker script
// shared_memory.ld moves those into the section from the kernels' objects.)
#define __shared__ static __attribute__((section("zl_emu_shared")))
extern "C" char __start_zl_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_zl_emu_shared[] __attribute__((weak, visibility("hidden")));

#define threadIdx (zl_emu_current->thread_idx)
#define blockIdx (zl_emu_current->block_idx)
#define blockDim (zl_emu_current->block_dim)
#define gridDim (zl_emu_current->grid_dim)

inline void __syncthreads() {
  zl_emu_syncthreads();
}

template <class T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8);
  T out;
  zl_emu_shfl_xor(mask, &value, &out, sizeof(T), lane_mask);
  return out;
}

// The lanes of the warp meet, as at a shuffle: the emulator takes the full warp only.
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  (void)__shfl_xor_sync(mask, 0, 0);
}

// Threads of a block never run at the same time: plain read-modify-writes are atomic.
inline unsigned long long atomicMin(unsigned long long* address, unsigned long long value) {
  const unsigned long long old = *address;
  if (value < old) *address = value;
  return old;
}
inline float atomicAdd(float* address, float value) {
  const float old = *address;
  *address = old + value;
  return old;
}

inline float __uint_as_float(unsigned u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float __expf(float x) {
  return std::exp(x);
}
// Arithmetic rounded after each operation, which nvcc never fuses into an FMA (the kernels'
// sources are built with -ffp-contract=off here: CMakeLists.txt).
inline float __fmul_rn(float a, float b) {
  return a * b;
}
inline float __fadd_rn(float a, float b) {
  return a + b;
}
inline float __fsub_rn(float a, float b) {
  return a - b;
}
// a b + c rounded once, as the GPU's FMA.
inline float __fmaf_rn(float a, float b, float c) {
  return std::fma(a, b, c);
}

// Whether a kernel argument may reach the kernel: pointers must be null or device memory.
template <class T>
bool zl_emu_check_argument(const T& value, int argument) {
  if constexpr (std::is_pointer_v<T>)
    return zl_emu_check_kernel_pointer(static_cast<const void*>(value), argument) != 0;
  else
    return true;
}

// kernel<<<grid, block, shared, stream>>>(args...) is spelt zl_emu_kernel_launch(kernel, grid,
// block, shared, stream, args...) where the sources are not compiled by nvcc
// (cuda/device_math.cuh). Every pointer argument must be null or device memory, as on a GPU.
template <class... Params, class... Args>
void zl_emu_kernel_launch(void (*kernel)(Params...), dim3 grid, dim3 block,
                          std::size_t shared_bytes, cudaStream_t stream, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "a kernel launch with the wrong arguments");
  struct Call {
    void (*kernel)(Params...);
    std::tuple<std::decay_t<Params>...> params;
  };
  auto call = std::make_unique<Call>(
      Call{kernel, std::tuple<std::decay_t<Params>...>(std::forward<Args>(args)...)});
  int argument = 0;
  const bool valid =
      std::apply([&](const auto&... p) { return (zl_emu_check_argument(p, argument++) && ...); },
                 call->params);
  if (!valid) return;  // the error names the argument
  zl_emu_launch(
      grid, block, shared_bytes, stream,
      [](void* context) {
        auto* c = static_cast<Call*>(context);
        std::apply(c->kernel, c->params);
      },
      call.release(), [](void* context) { delete static_cast<Call*>(context); },
      __start_zl_emu_shared, __stop_zl_emu_shared);
}
