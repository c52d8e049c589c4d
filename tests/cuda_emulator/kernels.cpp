// The CUDA emulator's kernel launches (libzerolora_cuda_emulator.so, with runtime.cpp): one
// block at a time; each thread of the block runs on a fiber until it finishes or reaches
// __syncthreads or a warp shuffle, one warp at a time. A barrier opens when every live thread
// of the block (or lane of the warp) has reached it; a barrier that can never open (a divergent
// __syncthreads, a shuffle in a warp with exited lanes or fewer than 32 threads) is an error rather
// than a hang.
// __shared__ memory is filled with 0xff bytes before every block. Launch shapes are checked
// against CUDA's limits when the kernel is launched; it runs later, on its stream's thread
// (streams.cpp), one kernel at a time in the process (one mutex).
//
// A GPU gives no order among the blocks of a grid, nor among the threads of a block between two
// barriers; code that leans on one has a race. ZEROLORA_EMULATED_ORDER=reverse runs blocks, and
// the runnable threads of a block, last to first (the default, `forward`, first to last): of
// any two threads that touch the same memory between barriers, each order runs first in one of
// the two, so a test that passes in both is not passing on the emulator's order by luck.
#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_runtime.h"
#include "emulator_state.hpp"

using zerolora::cuda_emulator::fail;

namespace {

constexpr std::size_t kFiberStackBytes = std::size_t{256} << 10;
constexpr unsigned kWarp = 32;

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
  void* scheduler = nullptr;  // the stream thread's stack pointer while a worker runs
  Worker* running = nullptr;
  void (*body)(void*) = nullptr;
  void* context = nullptr;
  // Per warp, two slots of 32 lanes' values: lanes one shuffle ahead write the other parity.
  std::vector<std::uint64_t> exchange;
};

Block* active_block = nullptr;               // the block being run (launches hold launch_mutex)
thread_local bool running_a_kernel = false;  // on this thread (a stream's)
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

enum class Order { kForward, kReverse, kInvalid };

// ZEROLORA_EMULATED_ORDER, read once.
Order launch_order() {
  static const Order order = [] {
    const char* value = std::getenv("ZEROLORA_EMULATED_ORDER");
    if (!value || !*value || std::strcmp(value, "forward") == 0) return Order::kForward;
    if (std::strcmp(value, "reverse") == 0) return Order::kReverse;
    return Order::kInvalid;
  }();
  return order;
}

enum class Opened { kYes, kNo, kError };

// Opens warp w's shuffle when every lane of it waits there. A warp whose lanes do not all wait
// at one (some exited, some at __syncthreads, fewer than 32 threads) can never pass it: kError.
Opened open_shuffle(Block& block, unsigned w, unsigned threads, std::string& error) {
  const unsigned first = w * kWarp, last = std::min(threads, first + kWarp);
  bool any = false, all = true;
  for (unsigned t = first; t < last; ++t) {
    if (block.threads[t].state == ThreadState::kAtShuffle)
      any = true;
    else
      all = false;
  }
  if (!any) return Opened::kNo;
  if (!all || last - first != kWarp) {
    for (unsigned t = first; t < last; ++t)
      if (block.threads[t].state != ThreadState::kAtShuffle) {
        error = "a full-warp shuffle in warp " + std::to_string(w) + " of " +
                thread_name(block.threads[first]) + " while lane " + std::to_string(t - first) +
                (block.threads[t].state == ThreadState::kDone ? " has exited"
                                                              : " waits at __syncthreads");
        return Opened::kError;
      }
    error = "a full-warp shuffle in a warp of " + std::to_string(last - first) +
            " threads (blockDim.x is not a multiple of 32)";
    return Opened::kError;
  }
  for (unsigned t = first; t < last; ++t) {
    if (block.threads[t].mask != 0xffffffffu) {
      error = "a shuffle with a partial lane mask: the emulator takes full-warp shuffles only";
      return Opened::kError;
    }
    if (block.threads[t].shuffles != block.threads[first].shuffles) {
      error = "lanes of warp " + std::to_string(w) + " of " + thread_name(block.threads[first]) +
              " meet at different shuffles";
      return Opened::kError;
    }
  }
  for (unsigned t = first; t < last; ++t) block.threads[t].state = ThreadState::kRunnable;
  return Opened::kYes;
}

// Runs warp w's lanes (in `reverse` order or not) until each has ended or waits at
// __syncthreads, passing its shuffles on the way; false with `error` set when it cannot.
bool run_warp(Block& block, unsigned w, unsigned threads, bool reverse, std::string& error) {
  const unsigned first = w * kWarp, lanes = std::min(threads, first + kWarp) - first;
  for (;;) {
    for (unsigned k = 0; k < lanes; ++k) {
      Thread& f = block.threads[first + (reverse ? lanes - 1 - k : k)];
      if (f.state == ThreadState::kRunnable && !run_thread(block, f)) {
        error = "no memory for the fibers' stacks";
        return false;
      }
    }
    switch (open_shuffle(block, w, threads, error)) {
      case Opened::kYes:
        continue;
      case Opened::kNo:
        return true;
      case Opened::kError:
        return false;
    }
  }
}

// Runs one block to its end; false with `error` set when it cannot finish. Between two
// __syncthreads the block's warps run one after another, each as far as it goes (warps are
// independent on a GPU: one may be at the next reduction while another still reads the last).
bool run_block(Block& block, dim3 grid, dim3 dims, uint3 index, bool reverse, std::string& error) {
  const unsigned threads = dims.x * dims.y * dims.z;
  const unsigned warps = (threads + kWarp - 1) / kWarp;
  block.threads.assign(threads, Thread{});
  block.exchange.assign(std::size_t{2} * kWarp * warps, 0);
  for (unsigned t = 0; t < threads; ++t) {
    Thread& f = block.threads[t];
    f.where.thread_idx = {t % dims.x, t / dims.x % dims.y, t / (dims.x * dims.y)};
    f.where.block_idx = index;
    f.where.block_dim = dims;
    f.where.grid_dim = grid;
  }
  for (;;) {
    bool ok = true;
    for (unsigned k = 0; k < warps && ok; ++k)
      ok = run_warp(block, reverse ? warps - 1 - k : k, threads, reverse, error);
    bool all_done = true, any_waiting = false;
    for (const Thread& f : block.threads) {
      if (f.state == ThreadState::kAtBarrier) any_waiting = true;
      if (f.state != ThreadState::kDone) all_done = false;
    }
    if (ok && all_done) return true;
    if (ok && any_waiting) {  // every live thread waits at __syncthreads: it opens
      for (Thread& f : block.threads)
        if (f.state == ThreadState::kAtBarrier) f.state = ThreadState::kRunnable;
      continue;
    }
    for (Thread& f : block.threads)
      if (f.worker) worker_pool.reset(f.worker);
    return false;
  }
}

}  // namespace

extern "C" {

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

void zl_emu_launch(dim3 grid, dim3 block_dims, std::size_t shared_bytes, cudaStream_t stream,
                   void (*body)(void*), void* context, void (*release)(void*), char* shared,
                   char* shared_end) {
  std::unique_ptr<void, void (*)(void*)> owned(context, release);
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
  if (running_a_kernel) {
    fail(cudaErrorLaunchFailure, "a kernel launched from inside a kernel");
    return;
  }
  const Order order = launch_order();
  if (order == Order::kInvalid) {
    fail(cudaErrorInvalidValue, std::string("ZEROLORA_EMULATED_ORDER=") +
                                    std::getenv("ZEROLORA_EMULATED_ORDER") +
                                    ": the emulator takes forward or reverse");
    return;
  }
  const bool reverse = order == Order::kReverse;
  std::shared_ptr<void> kept(owned.release(), release);  // a std::function copies what it holds
  zerolora::cuda_emulator::enqueue(stream, [=] {
    std::lock_guard serialized(launch_mutex);
    running_a_kernel = true;
    Block block;
    block.body = body;
    block.context = kept.get();
    active_block = &block;
    std::string error;
    const unsigned long long blocks = static_cast<unsigned long long>(grid.x) * grid.y * grid.z;
    for (unsigned long long k = 0; k < blocks && error.empty(); ++k) {
      const unsigned long long b = reverse ? blocks - 1 - k : k;
      const uint3 index{static_cast<unsigned>(b % grid.x),
                        static_cast<unsigned>(b / grid.x % grid.y),
                        static_cast<unsigned>(b / grid.x / grid.y)};
      if (shared) std::memset(shared, 0xff, static_cast<std::size_t>(shared_end - shared));
      run_block(block, grid, block_dims, index, reverse, error);
    }
    active_block = nullptr;
    running_a_kernel = false;
    if (!error.empty()) zerolora::cuda_emulator::fail_in_stream(cudaErrorLaunchFailure, error);
  });
}
}  // extern "C"
