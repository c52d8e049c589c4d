// The CUDA emulator's runtime (libzerolora_cuda_emulator.so): emulated GPUs (one, or
// ZEROLORA_EMULATED_GPUS) whose memory is host memory, with the checks a real GPU would make
// fatal and a test would otherwise miss.
//   - Memory: every cudaMalloc is recorded; copies, fills, GEMM operands and kernel pointer
//     arguments must lie in one live allocation (device side) or outside all of them (host
//     side). New allocations are filled with 0xff bytes (NaN as fp32), so a kernel that reads
//     memory nobody wrote shows it; __shared__ memory is filled the same way before every
//     block. Overlapping copies are refused (undefined in CUDA).
//   - Kernels run at launch, in order (every stream is the same in-order queue). One block at a
//     time; each thread of the block runs on a fiber until it finishes or reaches
//     __syncthreads or a warp shuffle. A barrier opens when every live thread of the
//     block (or lane of the warp) has reached it; a barrier that can never open (a divergent
//     __syncthreads, a shuffle in a warp with exited lanes or fewer than 32 threads) is an error
//     rather than a hang. Launch shapes are checked against CUDA's limits.
//   - Errors are CUDA's: the call returns the error, cudaGetLastError returns it once, and
//     cudaGetErrorString gives the emulator's description of what went wrong.
// The CUDA runtime is process-wide state, so the emulator's is too (one mutex guards it; the
// last error and the current device are the process's, not each host thread's). Launches are
// serialized (another mutex); a launch's fibers run on the launching thread.
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_runtime.h"

namespace {

constexpr std::size_t kDeviceBytes = std::size_t{16} << 30;  // the emulated GPU's memory
constexpr std::size_t kAllocationAlignment = 256;            // what cudaMalloc guarantees
constexpr std::size_t kFiberStackBytes = std::size_t{256} << 10;
constexpr unsigned kWarp = 32;

struct Runtime {
  std::mutex mutex;
  std::map<std::uintptr_t, std::size_t> allocations;  // base -> bytes
  std::size_t allocated = 0;
  int current_device = 0;
  cudaError_t last_error = cudaSuccess;
  std::string last_message;
};

Runtime& runtime() {
  static Runtime instance;
  return instance;
}

cudaError_t fail(cudaError_t error, const std::string& message) {
  Runtime& rt = runtime();
  std::lock_guard lock(rt.mutex);
  rt.last_error = error;
  rt.last_message = "CUDA emulator: " + message;
  return error;
}

std::string describe(const void* pointer, std::size_t bytes) {
  char text[96];
  std::snprintf(text, sizeof text, "[%p, +%zu bytes)", pointer, bytes);
  return text;
}

// The allocation holding [pointer, pointer + bytes): 1 inside one, 0 outside all, -1 when the
// range starts in one and runs past its end.
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

// ---- fibers ---------------------------------------------------------------------------------

enum class ThreadState { kRunnable, kAtBarrier, kAtShuffle, kDone };

struct Worker;

// One CUDA thread of the block being run.
struct Thread {
  ZlEmuThread where;
  ThreadState state = ThreadState::kRunnable;
  Worker* worker = nullptr;  // the fiber that runs it, from its start to its end
  unsigned shuffles = 0;     // shuffles passed: the parity picks the exchange slots
  unsigned mask = 0;
};

// Saves the callee-saved registers on the current stack, stores its pointer in *save, and
// continues on the stack `load` (one this function saved, or a new one from start_stack). A few
// instructions: a CUDA thread switches at every barrier and shuffle, millions of times a step
// (swapcontext makes a system call at each). The SSE and x87 control words are not switched:
// nothing in a kernel changes them. x86-64 only (CMake builds the emulator there alone).
extern "C" void zl_emu_switch(void** save, void* load);
asm(R"(
  .pushsection .text
  .p2align 4
  .type zl_emu_switch, @function
zl_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size zl_emu_switch, .-zl_emu_switch
  .popsection
)");

// A fiber: a stack that runs CUDA threads one after another, so that a thread that never waits
// costs two switches, not a new context.
struct Worker {
  void* stack = nullptr;
  void* saved = nullptr;  // its stack pointer while it is switched out
  Thread* thread = nullptr;
};

// The process's fibers, kept from launch to launch (launches are serialized).
struct WorkerPool {
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<Worker*> idle;
  ~WorkerPool() {
    for (auto& w : workers) munmap(w->stack, kFiberStackBytes);
  }
  Worker* take();
  // A worker whose thread was abandoned (a failed block) starts afresh when next used.
  void reset(Worker* w);
};

struct Block {
  std::vector<Thread> threads;
  void* scheduler = nullptr;  // the launching thread's stack pointer while a worker runs
  Worker* running = nullptr;
  void (*body)(void*) = nullptr;
  void* context = nullptr;
  // Per warp, two slots of 32 lanes' values: lanes one shuffle ahead write the other parity.
  std::vector<std::uint64_t> exchange;
};

Block* active_block = nullptr;  // the block being run (launches hold launch_mutex)
WorkerPool worker_pool;
std::mutex launch_mutex;

}  // namespace

extern "C" {
const ZlEmuThread* zl_emu_current = nullptr;
}

namespace {

void switch_to_scheduler(Worker& self) {
  zl_emu_current = nullptr;
  zl_emu_switch(&self.saved, active_block->scheduler);
}

[[noreturn]] void worker_loop() {
  for (;;) {
    Worker& self = *active_block->running;
    active_block->body(active_block->context);
    self.thread->state = ThreadState::kDone;
    self.thread->worker = nullptr;
    self.thread = nullptr;
    worker_pool.idle.push_back(&self);
    switch_to_scheduler(self);
    // switched back in with the next thread (of this block or a later one)
  }
}

// A new stack that zl_emu_switch enters at worker_loop, as if called (the return address'
// slot 16-byte aligned).
void* start_stack(void* stack) {
  auto top = (reinterpret_cast<std::uintptr_t>(stack) + kFiberStackBytes) & ~std::uintptr_t{15};
  auto* slot = reinterpret_cast<std::uint64_t*>(top - 16);
  slot[0] = reinterpret_cast<std::uint64_t>(&worker_loop);  // zl_emu_switch's `ret`
  std::uint64_t* frame = slot - 6;                          // the 6 registers it pops
  std::memset(frame, 0, 6 * sizeof *frame);
  return frame;
}

Worker* WorkerPool::take() {
  if (!idle.empty()) {
    Worker* w = idle.back();
    idle.pop_back();
    return w;
  }
  void* stack = mmap(nullptr, kFiberStackBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (stack == MAP_FAILED) return nullptr;
  mprotect(stack, 4096, PROT_NONE);  // a guard page: a fiber's stack overflow faults
  workers.push_back(std::make_unique<Worker>());
  workers.back()->stack = stack;
  workers.back()->saved = start_stack(stack);
  return workers.back().get();
}

void WorkerPool::reset(Worker* w) {
  w->saved = start_stack(w->stack);
  w->thread = nullptr;
  idle.push_back(w);
}

void yield_to_scheduler() {
  switch_to_scheduler(*active_block->running);
  zl_emu_current = &active_block->running->thread->where;
}

// Runs thread t until it waits or ends; false when no fiber can be had for it.
bool run_thread(Block& block, Thread& t) {
  if (!t.worker) {
    t.worker = worker_pool.take();
    if (!t.worker) return false;
    t.worker->thread = &t;
  }
  block.running = t.worker;
  zl_emu_current = &t.where;
  zl_emu_switch(&block.scheduler, t.worker->saved);
  return true;
}

std::string thread_name(const Thread& f) {
  return "block (" + std::to_string(f.where.block_idx.x) + "," +
         std::to_string(f.where.block_idx.y) + "," + std::to_string(f.where.block_idx.z) +
         ") thread " + std::to_string(f.where.thread_idx.x);
}

// Opens what can open: a warp whose live lanes all wait at a shuffle, else a block whose live
// threads all wait at __syncthreads. Returns false with `error` set when nothing can.
bool open_barriers(Block& block, unsigned threads, std::string& error) {
  bool opened = false;
  const unsigned warps = (threads + kWarp - 1) / kWarp;
  for (unsigned w = 0; w < warps; ++w) {
    const unsigned first = w * kWarp, last = std::min(threads, first + kWarp);
    bool any = false, all = true;
    for (unsigned t = first; t < last; ++t) {
      const Thread& f = block.threads[t];
      if (f.state == ThreadState::kAtShuffle)
        any = true;
      else
        all = false;
    }
    if (!any) continue;
    if (!all || last - first != kWarp) {
      for (unsigned t = first; t < last; ++t)
        if (block.threads[t].state != ThreadState::kAtShuffle) {
          error = "a full-warp shuffle in warp " + std::to_string(w) + " of " +
                  thread_name(block.threads[first]) + " while lane " + std::to_string(t - first) +
                  (block.threads[t].state == ThreadState::kDone ? " has exited"
                                                                : " waits at __syncthreads");
          return false;
        }
      error = "a full-warp shuffle in a warp of " + std::to_string(last - first) +
              " threads (blockDim.x is not a multiple of 32)";
      return false;
    }
    for (unsigned t = first; t < last; ++t) {
      if (block.threads[t].mask != 0xffffffffu) {
        error = "a shuffle with a partial lane mask: the emulator takes full-warp shuffles only";
        return false;
      }
      if (block.threads[t].shuffles != block.threads[first].shuffles) {
        error = "lanes of warp " + std::to_string(w) + " of " + thread_name(block.threads[first]) +
                " meet at different shuffles";
        return false;
      }
    }
    for (unsigned t = first; t < last; ++t) block.threads[t].state = ThreadState::kRunnable;
    opened = true;
  }
  if (opened) return true;
  bool any_waiting = false, all_waiting = true;
  for (const Thread& f : block.threads) {
    if (f.state == ThreadState::kAtBarrier)
      any_waiting = true;
    else if (f.state != ThreadState::kDone)
      all_waiting = false;
  }
  if (any_waiting && all_waiting) {
    for (Thread& f : block.threads)
      if (f.state == ThreadState::kAtBarrier) f.state = ThreadState::kRunnable;
    return true;
  }
  error = "a barrier that can never open in " + thread_name(block.threads[0]) +
          "'s block (threads wait at __syncthreads while others wait at a shuffle)";
  return false;
}

// Runs one block to its end; false with `error` set when it cannot finish.
bool run_block(Block& block, dim3 grid, dim3 dims, uint3 index, std::string& error) {
  const unsigned threads = dims.x * dims.y * dims.z;
  block.threads.assign(threads, Thread{});
  block.exchange.assign(std::size_t{2} * kWarp * ((threads + kWarp - 1) / kWarp), 0);
  for (unsigned t = 0; t < threads; ++t) {
    Thread& f = block.threads[t];
    f.where.thread_idx = {t % dims.x, t / dims.x % dims.y, t / (dims.x * dims.y)};
    f.where.block_idx = index;
    f.where.block_dim = dims;
    f.where.grid_dim = grid;
  }
  for (;;) {
    bool all_done = true;
    for (Thread& f : block.threads) {
      if (f.state == ThreadState::kRunnable && !run_thread(block, f)) {
        error = "no memory for the fibers' stacks";
        break;
      }
      if (f.state != ThreadState::kDone) all_done = false;
    }
    if (all_done) return true;
    if (error.empty() && open_barriers(block, threads, error)) continue;
    for (Thread& f : block.threads)
      if (f.worker) worker_pool.reset(f.worker);
    return false;
  }
}

}  // namespace

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
  prop->totalGlobalMem = kDeviceBytes;
  prop->major = 9;  // Hopper, what the backend is built for (sm_90)
  prop->minor = 0;
  prop->multiProcessorCount = 132;
  prop->maxThreadsPerBlock = 1024;
  prop->maxGridSize[0] = 2147483647;
  prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
  prop->warpSize = 32;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(std::size_t* free, std::size_t* total) {
  Runtime& rt = runtime();
  std::lock_guard lock(rt.mutex);
  *total = kDeviceBytes;
  *free = kDeviceBytes - rt.allocated;
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  Runtime& rt = runtime();
  std::lock_guard lock(rt.mutex);
  const cudaError_t e = rt.last_error;
  rt.last_error = cudaSuccess;
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

cudaError_t cudaDeviceSynchronize(void) {
  return cudaSuccess;
}

// ---- memory ---------------------------------------------------------------------------------

cudaError_t cudaMalloc(void** pointer, std::size_t bytes) {
  *pointer = nullptr;
  const std::size_t rounded = (std::max<std::size_t>(bytes, 1) + kAllocationAlignment - 1) /
                              kAllocationAlignment * kAllocationAlignment;
  {
    Runtime& rt = runtime();
    std::lock_guard lock(rt.mutex);
    if (rounded > kDeviceBytes - rt.allocated) {
      rt.last_error = cudaErrorMemoryAllocation;
      rt.last_message = "CUDA emulator: cudaMalloc of " + std::to_string(bytes) +
                        " bytes: out of the emulated GPU's memory";
      return cudaErrorMemoryAllocation;
    }
  }
  void* p = std::aligned_alloc(kAllocationAlignment, rounded);
  if (!p) return fail(cudaErrorMemoryAllocation, "cudaMalloc: the host has no memory left");
  std::memset(p, 0xff, rounded);
  Runtime& rt = runtime();
  std::lock_guard lock(rt.mutex);
  rt.allocations[reinterpret_cast<std::uintptr_t>(p)] = bytes;
  rt.allocated += rounded;
  *pointer = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* pointer) {
  if (!pointer) return cudaSuccess;
  Runtime& rt = runtime();
  std::lock_guard lock(rt.mutex);
  const auto it = rt.allocations.find(reinterpret_cast<std::uintptr_t>(pointer));
  if (it == rt.allocations.end()) {
    rt.last_error = cudaErrorInvalidValue;
    rt.last_message =
        "CUDA emulator: cudaFree of " + describe(pointer, 0) + ", which cudaMalloc did not return";
    return cudaErrorInvalidValue;
  }
  rt.allocated -= (std::max<std::size_t>(it->second, 1) + kAllocationAlignment - 1) /
                  kAllocationAlignment * kAllocationAlignment;
  rt.allocations.erase(it);
  std::free(pointer);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
  const cudaError_t status = check_copy(dst, bytes, src, bytes, kind, "cudaMemcpy");
  if (status == cudaSuccess && bytes) std::memcpy(dst, src, bytes);
  return status;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t) {
  const cudaError_t status = check_copy(dst, bytes, src, bytes, kind, "cudaMemcpyAsync");
  if (status == cudaSuccess && bytes) std::memcpy(dst, src, bytes);
  return status;
}

cudaError_t cudaMemcpy2DAsync(void* dst, std::size_t dst_pitch, const void* src,
                              std::size_t src_pitch, std::size_t width, std::size_t height,
                              cudaMemcpyKind kind, cudaStream_t) {
  if (height == 0 || width == 0) return cudaSuccess;
  if (dst_pitch < width || src_pitch < width)
    return fail(cudaErrorInvalidValue, "cudaMemcpy2DAsync: a pitch is less than the width");
  const cudaError_t status =
      check_copy(dst, dst_pitch * (height - 1) + width, src, src_pitch * (height - 1) + width, kind,
                 "cudaMemcpy2DAsync");
  if (status != cudaSuccess) return status;
  for (std::size_t r = 0; r < height; ++r)
    std::memcpy(static_cast<char*>(dst) + r * dst_pitch,
                static_cast<const char*>(src) + r * src_pitch, width);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* dst, int value, std::size_t bytes, cudaStream_t) {
  const cudaError_t status = check_device(dst, bytes, "cudaMemsetAsync", "destination");
  if (status == cudaSuccess && bytes) std::memset(dst, value, bytes);
  return status;
}

cudaError_t cudaMemset2DAsync(void* dst, std::size_t pitch, int value, std::size_t width,
                              std::size_t height, cudaStream_t) {
  if (height == 0 || width == 0) return cudaSuccess;
  if (pitch < width)
    return fail(cudaErrorInvalidValue, "cudaMemset2DAsync: the pitch is less than the width");
  const cudaError_t status =
      check_device(dst, pitch * (height - 1) + width, "cudaMemset2DAsync", "destination");
  if (status != cudaSuccess) return status;
  for (std::size_t r = 0; r < height; ++r)
    std::memset(static_cast<char*>(dst) + r * pitch, value, width);
  return cudaSuccess;
}

// ---- streams and events: one in-order queue that has always finished -------------------------

struct CUstream_st {
  int id;
};
struct CUevent_st {
  std::chrono::steady_clock::time_point recorded;
  bool timing = true;
};

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  *stream = new CUstream_st{1};
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned) {
  return cudaStreamCreate(stream);
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete stream;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) {
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t event, unsigned) {
  if (!event) return fail(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: a null event");
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = new CUevent_st{std::chrono::steady_clock::now()};
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags) {
  const cudaError_t status = cudaEventCreate(event);
  (*event)->timing = !(flags & cudaEventDisableTiming);
  return status;
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t) {
  if (!event) return fail(cudaErrorInvalidResourceHandle, "cudaEventRecord: a null event");
  event->recorded = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t event) {
  if (!event) return fail(cudaErrorInvalidResourceHandle, "cudaEventQuery: a null event");
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  return cudaEventQuery(event);
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!start || !end || !start->timing || !end->timing)
    return fail(cudaErrorInvalidResourceHandle,
                "cudaEventElapsedTime: a null event or one made with cudaEventDisableTiming");
  *ms = std::chrono::duration<float, std::milli>(end->recorded - start->recorded).count();
  return cudaSuccess;
}

// ---- kernels --------------------------------------------------------------------------------

void zl_emu_syncthreads(void) {
  active_block->running->thread->state = ThreadState::kAtBarrier;
  yield_to_scheduler();
}

void zl_emu_shfl_xor(unsigned mask, const void* value, void* out, std::size_t bytes,
                     int lane_mask) {
  Block& block = *active_block;
  Thread& self = *block.running->thread;
  const unsigned t = self.where.thread_idx.x +
                     self.where.block_dim.x * (self.where.thread_idx.y +
                                               self.where.block_dim.y * self.where.thread_idx.z);
  const unsigned warp = t / kWarp, lane = t % kWarp;
  std::uint64_t* slots = &block.exchange[(std::size_t{2} * warp + (self.shuffles & 1)) * kWarp];
  std::memcpy(&slots[lane], value, bytes);
  self.mask = mask;
  self.state = ThreadState::kAtShuffle;
  yield_to_scheduler();
  std::memcpy(out, &slots[(lane ^ static_cast<unsigned>(lane_mask)) % kWarp], bytes);
  ++self.shuffles;
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

void zl_emu_launch(dim3 grid, dim3 block_dims, std::size_t shared_bytes, cudaStream_t,
                   void (*body)(void*), void* context, char* shared, char* shared_end) {
  const unsigned long long threads =
      static_cast<unsigned long long>(block_dims.x) * block_dims.y * block_dims.z;
  if (threads == 0 || threads > 1024 || block_dims.z > 64 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535 ||
      shared_bytes > 48 * 1024) {
    fail(cudaErrorInvalidConfiguration,
         "a launch of grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," +
             std::to_string(grid.z) + ") x block (" + std::to_string(block_dims.x) + "," +
             std::to_string(block_dims.y) + "," + std::to_string(block_dims.z) +
             ") is outside CUDA's limits");
    return;
  }
  if (zl_emu_current) {
    fail(cudaErrorLaunchFailure, "a kernel launched from inside a kernel");
    return;
  }
  std::lock_guard serialized(launch_mutex);
  Block block;
  block.body = body;
  block.context = context;
  active_block = &block;
  std::string error;
  for (unsigned z = 0; z < grid.z && error.empty(); ++z)
    for (unsigned y = 0; y < grid.y && error.empty(); ++y)
      for (unsigned x = 0; x < grid.x && error.empty(); ++x) {
        if (shared) std::memset(shared, 0xff, static_cast<std::size_t>(shared_end - shared));
        run_block(block, grid, block_dims, uint3{x, y, z}, error);
      }
  active_block = nullptr;
  if (!error.empty()) fail(cudaErrorLaunchFailure, error);
}

}  // extern "C"
