#include "cuda/nccl_communicator.hpp"

#include <dlfcn.h>
#include <nccl.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/error.hpp"

namespace zerolora::cuda {
namespace {

// The process exits with this code when the watchdog ends the job (an internal failure of the
// run's machinery, as exit_codes.hpp classifies a lost peer).
constexpr int kWatchdogExit = 70;
// And with this one when the GPU reported a fault while a collective was pending (a kernel's or
// a copy's, seen through the collective's event): an error of the run, not of a peer.
constexpr int kGpuFaultExit = 1;

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ncclCommAbort may itself hang: it synchronises NCCL's streams, which a stuck collective never
// lets finish (NVIDIA/nccl#829; PyTorch's watchdog guards it with a monitor thread). Around
// every abort, a thread of its own ends the process if the abort has not returned within
// kAbortSeconds, so that a failure never turns into the hang it reports.
constexpr int kAbortSeconds = 10;

class AbortDeadline {
 public:
  explicit AbortDeadline(int rank) : state_(std::make_shared<State>()) {
    std::thread([state = state_, rank] {
      std::unique_lock lock(state->mutex);
      if (state->cv.wait_for(lock, std::chrono::seconds(kAbortSeconds),
                             [&] { return state->done; }))
        return;
      std::fprintf(stderr,
                   "zerolora: rank %d: ncclCommAbort did not return within %d s; ending the "
                   "process\n",
                   rank, kAbortSeconds);
      std::fflush(stderr);
      std::_Exit(kWatchdogExit);
    }).detach();
  }
  ~AbortDeadline() {
    {
      std::lock_guard lock(state_->mutex);
      state_->done = true;
    }
    state_->cv.notify_all();
  }
  AbortDeadline(const AbortDeadline&) = delete;
  AbortDeadline& operator=(const AbortDeadline&) = delete;

 private:
  struct State {
    std::mutex mutex;
    std::condition_variable cv;
    bool done = false;
  };
  std::shared_ptr<State> state_;
};

// NCCL_COMM_BLOCKING=0 overrides the communicator's config (NCCL's init.cc): every collective
// would then return ncclInProgress, which this blocking-mode driver treats as a failure.
void refuse_nonblocking_nccl() {
  const char* blocking = std::getenv("NCCL_COMM_BLOCKING");
  if (blocking && std::string(blocking) == "0")
    throw UsageError(
        "NCCL_COMM_BLOCKING=0: zerolora drives NCCL in blocking mode under its own watchdog "
        "(--ddp_timeout); unset NCCL_COMM_BLOCKING");
}

// NCCL's entry points from libnccl.so.2, loaded when the first communicator is made.
struct NcclApi {
  void* library = nullptr;
#define ZL_NCCL_FUNCTION(name) decltype(&::name) name = nullptr;
  ZL_NCCL_FUNCTION(ncclGetVersion)
  ZL_NCCL_FUNCTION(ncclGetUniqueId)
  ZL_NCCL_FUNCTION(ncclCommInitRank)
  ZL_NCCL_FUNCTION(ncclCommGetAsyncError)
  ZL_NCCL_FUNCTION(ncclCommFinalize)
  ZL_NCCL_FUNCTION(ncclCommDestroy)
  ZL_NCCL_FUNCTION(ncclCommAbort)
  ZL_NCCL_FUNCTION(ncclGetErrorString)
  ZL_NCCL_FUNCTION(ncclGetLastError)
  ZL_NCCL_FUNCTION(ncclAllGather)
  ZL_NCCL_FUNCTION(ncclReduceScatter)
  ZL_NCCL_FUNCTION(ncclAllReduce)
  ZL_NCCL_FUNCTION(ncclBroadcast)
#undef ZL_NCCL_FUNCTION

  // Throws DeviceError saying why the library or a symbol is missing.
  NcclApi() {
    // Never unloaded (RTLD_NODELETE): NCCL leaves threads and exit hooks in the process.
    library = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!library)
      throw DeviceError(std::string("cannot load libnccl.so.2 (") + dlerror() +
                        "): put NCCL's folder on LD_LIBRARY_PATH, or use --ddp_backend mpi");
    auto bind = [&](auto& function, const char* symbol) {
      function =
          reinterpret_cast<std::remove_reference_t<decltype(function)>>(dlsym(library, symbol));
      if (!function) throw DeviceError(std::string("libnccl.so.2 has no ") + symbol);
    };
#define ZL_NCCL_BIND(name) bind(name, #name);
    ZL_NCCL_BIND(ncclGetVersion)
    ZL_NCCL_BIND(ncclGetUniqueId)
    ZL_NCCL_BIND(ncclCommInitRank)
    ZL_NCCL_BIND(ncclCommGetAsyncError)
    ZL_NCCL_BIND(ncclCommFinalize)
    ZL_NCCL_BIND(ncclCommDestroy)
    ZL_NCCL_BIND(ncclCommAbort)
    ZL_NCCL_BIND(ncclGetErrorString)
    ZL_NCCL_BIND(ncclGetLastError)
    ZL_NCCL_BIND(ncclAllGather)
    ZL_NCCL_BIND(ncclReduceScatter)
    ZL_NCCL_BIND(ncclAllReduce)
    ZL_NCCL_BIND(ncclBroadcast)
#undef ZL_NCCL_BIND
  }
  ~NcclApi() {
    if (library) dlclose(library);  // drops the reference; RTLD_NODELETE keeps the code mapped
  }
  NcclApi(const NcclApi&) = delete;
  NcclApi& operator=(const NcclApi&) = delete;

  std::string version() const {
    int v = 0;
    ncclGetVersion(&v);
    // 2.19 and later encode MAJOR * 10000 + MINOR * 100 + PATCH; older ones * 1000 + * 100.
    const int major = v >= 10000 ? v / 10000 : v / 1000;
    const int minor = v >= 10000 ? v / 100 % 100 : v / 100 % 10;
    return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(v % 100);
  }
};

ncclDataType_t nccl_type(ElementType type) {
  switch (type) {
    case ElementType::kFloat:
      return ncclFloat32;
    case ElementType::kDouble:
      return ncclFloat64;
    case ElementType::kInt64:
      return ncclInt64;
    case ElementType::kUInt64:
      return ncclUint64;
  }
  return ncclUint8;
}

// One collective in flight: `done` is recorded on the communication stream after it.
struct Collective {
  std::string what;    // "all_gather of 123456 bytes per rank"
  double started = 0;  // when the watchdog first saw `start` complete (0: not yet)
  cudaEvent_t ready = nullptr, start = nullptr, done = nullptr;
  ~Collective() {
    for (cudaEvent_t e : {ready, start, done})
      if (e) cudaEventDestroy(e);
  }
};

class NcclRequest final : public CommRequest {
 public:
  NcclRequest(std::shared_ptr<Collective> collective, cudaStream_t compute)
      : collective_(std::move(collective)), compute_(compute) {}
  ~NcclRequest() override {
    try {
      wait();
    } catch (...) {
    }
  }
  // The compute stream waits; the host does not.
  void wait() override {
    if (waited_) return;
    waited_ = true;
    check_cuda(cudaStreamWaitEvent(compute_, collective_->done, 0),
               "cudaStreamWaitEvent (compute stream on a collective)");
  }
  bool done() override { return cudaEventQuery(collective_->done) == cudaSuccess; }

 private:
  std::shared_ptr<Collective> collective_;
  cudaStream_t compute_;
  bool waited_ = false;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(CudaDevice& device, Communicator& bootstrap, double timeout_seconds)
      : device_(device),
        bootstrap_(bootstrap),
        timeout_(timeout_seconds),
        rank_(bootstrap.rank()),
        size_(bootstrap.size()) {
    refuse_nonblocking_nccl();
    if (bootstrap.device_memory())
      throw InternalError("NCCL's bootstrap communicator must take host buffers");
    ncclUniqueId id{};
    if (rank_ == 0) check(api_.ncclGetUniqueId(&id), "ncclGetUniqueId");
    bootstrap.broadcast(&id, sizeof(id), 0);
    check_cuda(cudaSetDevice(device.ordinal()), "cudaSetDevice");
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
               "cudaStreamCreate (NCCL's stream)");
    // The watchdog first: it also times the calls below, which block until every rank joins.
    watchdog_ = std::thread([this] { watch(); });
    // Created into a local and published under the lock: the watchdog reads comm_ meanwhile.
    ncclComm_t created = nullptr;
    try {
      check(guarded("ncclCommInitRank (" + std::to_string(size_) + " ranks)",
                    [&] { return api_.ncclCommInitRank(&created, size_, id, rank_); }),
            "ncclCommInitRank");
      std::lock_guard lock(mutex_);
      comm_ = created;
    } catch (...) {
      stop_watchdog();
      abort_communicator(created);
      cudaStreamDestroy(stream_);
      throw;
    }
  }

  // Unwinding from an error, or after NCCL reported one: abort at once (a finalize would wait
  // for ranks that may never come). Otherwise finalize under the watchdog, then destroy.
  ~NcclCommunicator() override {
    ncclResult_t async = ncclSuccess;
    api_.ncclCommGetAsyncError(comm_, &async);
    if (std::uncaught_exceptions() > 0 || async != ncclSuccess) {
      stop_watchdog();
      abort_communicator(comm_);
    } else {
      const ncclResult_t finalized =
          guarded("ncclCommFinalize", [&] { return api_.ncclCommFinalize(comm_); });
      stop_watchdog();
      if (finalized == ncclSuccess)
        api_.ncclCommDestroy(comm_);
      else
        abort_communicator(comm_);
    }
    retired_.clear();
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "nccl " + api_.version(); }
  bool device_memory() const override { return true; }

  Request all_gather_async(const void* send, void* recv, std::size_t bytes) override {
    return issue("all_gather of " + std::to_string(bytes) + " bytes per rank",
                 bytes * static_cast<std::size_t>(size_),
                 [&] { return api_.ncclAllGather(send, recv, bytes, ncclUint8, comm_, stream_); });
  }
  Request reduce_scatter_async(const void* send, void* recv, std::size_t count,
                               ElementType type) override {
    return issue("reduce_scatter of " + std::to_string(count) + " elements per rank",
                 count * element_bytes(type) * static_cast<std::size_t>(size_), [&] {
                   return api_.ncclReduceScatter(send, recv, count, nccl_type(type), ncclSum, comm_,
                                                 stream_);
                 });
  }
  Request all_reduce_async(void* data, std::size_t count, ElementType type) override {
    return issue(
        "all_reduce of " + std::to_string(count) + " elements", count * element_bytes(type), [&] {
          return api_.ncclAllReduce(data, data, count, nccl_type(type), ncclSum, comm_, stream_);
        });
  }
  Request broadcast_async(void* data, std::size_t bytes, int root) override {
    return issue(
        "broadcast of " + std::to_string(bytes) + " bytes from rank " + std::to_string(root), bytes,
        [&] { return api_.ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_); });
  }
  void barrier() override {
    device_.synchronize();
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize (NCCL's stream)");
    bootstrap_.barrier();
  }
  [[noreturn]] void abort(int exit_code) override {
    stop_watchdog();
    abort_communicator(comm_);
    bootstrap_.abort(exit_code);
    std::_Exit(exit_code);  // abort() does not return; the compiler cannot see it through virtual
  }
  CommStats stats() const override {
    std::lock_guard lock(mutex_);
    return stats_;
  }
  void reset_stats() override {
    std::lock_guard lock(mutex_);
    stats_ = {};
  }

 private:
  void check(ncclResult_t result, const std::string& call) {
    if (result == ncclSuccess) return;
    // NCCL keeps its last error text per process (2.28: the argument is ignored), so it is
    // there for a failed ncclCommInitRank too ("Duplicate GPU detected", for one).
    const char* last = api_.ncclGetLastError(comm_);
    throw DeviceError(call + " failed on rank " + std::to_string(rank_) + ": " +
                      api_.ncclGetErrorString(result) +
                      (last && *last ? std::string(" (") + last + ")" : std::string()));
  }

  // Runs one NCCL call (blocking mode: it may wait for the other ranks, e.g. while connecting)
  // with the watchdog timing it.
  template <class Call>
  ncclResult_t guarded(const std::string& what, Call call) {
    {
      std::lock_guard lock(mutex_);
      in_call_ = what;
      in_call_since_ = now_seconds();
    }
    const ncclResult_t result = call();
    std::lock_guard lock(mutex_);
    in_call_.clear();
    return result;
  }

  template <class Call>
  Request issue(std::string what, std::size_t bytes, Call call) {
    {
      // Collectives the watchdog retired: their events are destroyed here, not on its thread
      // (cudaEventDestroy can block behind a stuck NCCL kernel: PyTorch #97066).
      std::vector<std::shared_ptr<Collective>> retired;
      {
        std::lock_guard lock(mutex_);
        retired.swap(retired_);
      }
    }
    auto collective = std::make_shared<Collective>();
    collective->what = std::move(what);
    check_cuda(cudaEventCreateWithFlags(&collective->ready, cudaEventDisableTiming),
               "cudaEventCreate");
    check_cuda(cudaEventCreate(&collective->start), "cudaEventCreate");
    check_cuda(cudaEventCreate(&collective->done), "cudaEventCreate");
    // After the compute stream's work so far (the receive buffer may have been in use there);
    // `start` times the collective itself, from when the NCCL stream reaches it.
    check_cuda(cudaEventRecord(collective->ready, device_.stream()), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(stream_, collective->ready, 0), "cudaStreamWaitEvent");
    check_cuda(cudaEventRecord(collective->start, stream_), "cudaEventRecord");
    check(guarded("NCCL " + collective->what, call), "NCCL " + collective->what);
    check_cuda(cudaEventRecord(collective->done, stream_), "cudaEventRecord");
    {
      std::lock_guard lock(mutex_);
      in_flight_.push_back(collective);
      stats_.bytes += static_cast<std::int64_t>(bytes);
      stats_.calls += 1;
    }
    return std::make_unique<NcclRequest>(std::move(collective), device_.stream());
  }

  // Every 50 ms: retire finished collectives (their GPU time into busy_seconds), and end the
  // job when an NCCL call has blocked the host, or the oldest unfinished collective has run,
  // longer than the timeout, when NCCL reports an error, or when the GPU reports a fault. Of
  // NCCL only ncclCommGetAsyncError is called from here beside the main thread's calls; the
  // abort that ends the job runs under a deadline (AbortDeadline), as NCCL does not promise
  // that an abort beside another thread's blocked call returns.
  void watch() {
    cudaSetDevice(device_.ordinal());
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      cv_.wait_for(lock, std::chrono::milliseconds(50));
      if (stopping_) break;
      if (!in_call_.empty() && now_seconds() - in_call_since_ > timeout_) {
        const std::string what = in_call_;
        lock.unlock();
        fail(what + " has blocked for " + std::to_string(static_cast<int>(timeout_)) +
             " s (--ddp_timeout): a rank is gone or stuck");
      }
      while (!in_flight_.empty()) {
        // The CUDA queries run without the lock, which the main thread needs to issue work.
        const std::shared_ptr<Collective> oldest = in_flight_.front();
        lock.unlock();
        const cudaError_t state = cudaEventQuery(oldest->done);
        const cudaError_t started =
            state == cudaErrorNotReady ? cudaEventQuery(oldest->start) : cudaSuccess;
        float ms = 0;
        const bool timed = state == cudaSuccess &&
                           cudaEventElapsedTime(&ms, oldest->start, oldest->done) == cudaSuccess;
        lock.lock();
        if (stopping_) break;
        if (state == cudaSuccess) {
          if (timed) stats_.busy_seconds += ms / 1000.0;
          retired_.push_back(oldest);
          in_flight_.pop_front();
          continue;
        }
        // cudaEventQuery also returns the error of any earlier launch: a kernel's fault is not
        // a lost rank.
        const cudaError_t fault = state != cudaErrorNotReady ? state
                                  : started != cudaErrorNotReady && started != cudaSuccess
                                      ? started
                                      : cudaSuccess;
        if (fault != cudaSuccess) {
          const std::string what = oldest->what;
          lock.unlock();
          fail("the GPU reported " + std::string(cudaGetErrorName(fault)) + " (" +
                   cudaGetErrorString(fault) + ") while NCCL " + what +
                   " was pending: a kernel or copy failed on this rank",
               kGpuFaultExit);
        }
        // The timeout counts from when the collective could start (the compute stream reached
        // it), not from when the host queued it ahead.
        if (started == cudaSuccess && oldest->started == 0) oldest->started = now_seconds();
        if (oldest->started > 0 && now_seconds() - oldest->started > timeout_) {
          const std::string what = oldest->what;
          lock.unlock();
          fail("NCCL " + what + " did not finish within " +
               std::to_string(static_cast<int>(timeout_)) +
               " s (--ddp_timeout): a rank is gone or stuck");
        }
        break;
      }
      ncclResult_t async = ncclSuccess;
      if (comm_) api_.ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        lock.unlock();
        fail(std::string("NCCL reports ") + api_.ncclGetErrorString(async));
      }
    }
  }

  void stop_watchdog() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (watchdog_.joinable() && watchdog_.get_id() != std::this_thread::get_id()) watchdog_.join();
  }

  // From the watchdog: ends this process, which makes the launcher end every rank (a rank that
  // exits without MPI_Finalize fails the job). MPI is not called from here: the MPI library
  // may not allow a second thread in while the communication thread is inside a collective.
  [[noreturn]] void fail(const std::string& message, int exit_code = kWatchdogExit) {
    std::fprintf(stderr, "zerolora: rank %d of %d: %s; ending every rank\n", rank_, size_,
                 message.c_str());
    std::fflush(stderr);
    ncclComm_t comm = nullptr;
    {
      std::lock_guard lock(mutex_);
      comm = comm_;
    }
    abort_communicator(comm);
    std::_Exit(exit_code);
  }

  void abort_communicator(ncclComm_t comm) {
    if (!comm) return;
    const AbortDeadline deadline(rank_);
    api_.ncclCommAbort(comm);
  }

  NcclApi api_;
  CudaDevice& device_;
  Communicator& bootstrap_;
  double timeout_;
  int rank_, size_;
  cudaStream_t stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
  std::thread watchdog_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::string in_call_;  // the NCCL call the main thread is in ("" when none)
  double in_call_since_ = 0;
  std::deque<std::shared_ptr<Collective>> in_flight_;
  std::vector<std::shared_ptr<Collective>> retired_;  // done: the main thread frees them
  CommStats stats_;
};

}  // namespace

bool nccl_loadable(std::string* version_or_why) {
  try {
    const NcclApi api;
    if (version_or_why) *version_or_why = api.version();
    return true;
  } catch (const DeviceError& e) {
    if (version_or_why) *version_or_why = e.what();
    return false;
  }
}

std::unique_ptr<Communicator> make_nccl_communicator(CudaDevice& device, Communicator& bootstrap,
                                                     double timeout_seconds) {
  if (!(timeout_seconds > 0)) throw UsageError("--ddp_timeout must be positive");
  return std::make_unique<NcclCommunicator>(device, bootstrap, timeout_seconds);
}

}  // namespace zerolora::cuda
