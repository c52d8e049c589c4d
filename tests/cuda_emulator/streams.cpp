// The CUDA emulator's streams and events (libzerolora_cuda_emulator.so): as on a GPU, the work
// given to a stream (kernels, copies, fills, GEMMs, collectives) runs later, in order, apart
// from the host and from the other streams; only events order streams against each other, and
// only synchronisation (or a copy into pageable host memory) makes the host wait. Each stream
// is a queue run by a host thread of its own.
//
// ZEROLORA_EMULATED_LAG=collectives:MS makes every collective wait MS milliseconds before it
// runs, ZEROLORA_EMULATED_LAG=compute:MS every other piece of work (kernels, copies, fills,
// GEMMs, event records), so that work on one stream that does not wait for an event on the
// other reads memory the other has not written yet, or has overwritten already, instead of, by
// luck of timing, the right bytes.
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cuda_runtime.h"
#include "emulator_state.hpp"

using Clock = std::chrono::steady_clock;

namespace zerolora::cuda_emulator {
namespace {

// The point in a stream that an event recorded: done once the stream's work before it is.
struct Marker {
  bool done = false;
  Clock::time_point at;
};

}  // namespace
}  // namespace zerolora::cuda_emulator

struct CUstream_st {
  struct Work {
    std::function<void()> run;
    bool collective;
  };
  std::deque<Work> queue;
  bool running = false;  // the worker is running a piece of work taken from the queue
  bool stopping = false;
  std::thread worker;
};

struct CUevent_st {
  std::shared_ptr<zerolora::cuda_emulator::Marker> marker;  // the last record's; null: none
  bool timing = true;
};

namespace zerolora::cuda_emulator {
namespace {

// One lock and one condition for all streams and events: work is coarse (a kernel, a copy),
// so the contention is small next to the emulated work itself.
struct Scheduler {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<CUstream_st*> streams;
  int lag_ms = 0;  // ZEROLORA_EMULATED_LAG
  bool lag_collectives = false;
};

Scheduler& scheduler() {
  static Scheduler* instance = [] {
    auto* s = new Scheduler;  // never destroyed: stream threads may outlive static destruction
    if (const char* lag = std::getenv("ZEROLORA_EMULATED_LAG"); lag && *lag) {
      char what[16] = {};
      if (std::sscanf(lag, "%15[a-z]:%d", what, &s->lag_ms) != 2 || s->lag_ms < 0 ||
          (std::strcmp(what, "collectives") != 0 && std::strcmp(what, "compute") != 0)) {
        std::fprintf(stderr,
                     "CUDA emulator: ZEROLORA_EMULATED_LAG=%s is not collectives:MS or "
                     "compute:MS\n",
                     lag);
        std::abort();
      }
      s->lag_collectives = std::strcmp(what, "collectives") == 0;
    }
    return s;
  }();
  return *instance;
}

// Until the marker's stream has reached it.
void wait_for_marker(const std::shared_ptr<Marker>& marker) {
  Scheduler& sc = scheduler();
  std::unique_lock lock(sc.mutex);
  sc.changed.wait(lock, [&] { return marker->done; });
}

bool idle(const CUstream_st& s) {
  return s.queue.empty() && !s.running;
}

void run_stream(CUstream_st* s) {
  Scheduler& sc = scheduler();
  std::unique_lock lock(sc.mutex);
  for (;;) {
    sc.changed.wait(lock, [&] { return s->stopping || !s->queue.empty(); });
    if (s->queue.empty()) return;  // stopping, and nothing left
    CUstream_st::Work work = std::move(s->queue.front());
    s->queue.pop_front();
    s->running = true;
    lock.unlock();
    if (sc.lag_ms > 0 && work.collective == sc.lag_collectives)
      std::this_thread::sleep_for(std::chrono::milliseconds(sc.lag_ms));
    work.run();
    work.run = nullptr;  // what it captured goes before the stream counts as idle
    lock.lock();
    s->running = false;
    sc.changed.notify_all();
  }
}

CUstream_st* make_stream() {
  Scheduler& sc = scheduler();
  auto* s = new CUstream_st;
  std::lock_guard lock(sc.mutex);
  s->worker = std::thread(run_stream, s);
  sc.streams.push_back(s);
  return s;
}

// The legacy default stream (null) is a stream of its own here: the backend orders everything
// on streams it made (non-blocking ones), so the default stream's implicit synchronisation
// with blocking streams never comes into play.
CUstream_st* resolve(cudaStream_t stream) {
  static CUstream_st* const default_stream = make_stream();
  return stream ? stream : default_stream;
}

}  // namespace

void enqueue(cudaStream_t stream, std::function<void()> work, bool collective) {
  CUstream_st* s = resolve(stream);
  Scheduler& sc = scheduler();
  std::lock_guard lock(sc.mutex);
  s->queue.push_back({std::move(work), collective});
  sc.changed.notify_all();
}

void wait_for_stream(cudaStream_t stream) {
  CUstream_st* s = resolve(stream);
  Scheduler& sc = scheduler();
  std::unique_lock lock(sc.mutex);
  sc.changed.wait(lock, [&] { return idle(*s); });
}

void wait_for_device() {
  Scheduler& sc = scheduler();
  std::unique_lock lock(sc.mutex);
  sc.changed.wait(lock, [&] {
    for (const CUstream_st* s : sc.streams)
      if (!idle(*s)) return false;
    return true;
  });
}

}  // namespace zerolora::cuda_emulator

using namespace zerolora::cuda_emulator;

extern "C" {

cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  *stream = make_stream();
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned) {
  return cudaStreamCreate(stream);
}

// CUDA lets the stream's pending work finish after the call returns; here it finishes first.
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (!stream) return fail(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: the null stream");
  Scheduler& sc = scheduler();
  {
    std::unique_lock lock(sc.mutex);
    sc.changed.wait(lock, [&] { return idle(*stream); });
    stream->stopping = true;
    std::erase(sc.streams, stream);
    sc.changed.notify_all();
  }
  stream->worker.join();
  delete stream;
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  wait_for_stream(stream);
  return sticky_error();
}

cudaError_t cudaDeviceSynchronize(void) {
  wait_for_device();
  return sticky_error();
}

// The stream's later work waits for the event's last record (none: nothing to wait for).
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned) {
  if (!event) return fail(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: a null event");
  Scheduler& sc = scheduler();
  std::shared_ptr<Marker> marker;
  {
    std::lock_guard lock(sc.mutex);
    marker = event->marker;
  }
  if (marker) enqueue(stream, [marker] { wait_for_marker(marker); });
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = new CUevent_st;
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned flags) {
  const cudaError_t status = cudaEventCreate(event);
  (*event)->timing = !(flags & cudaEventDisableTiming);
  return status;
}

// Work already waiting for the event keeps its own reference to the record it waits for.
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (!event) return fail(cudaErrorInvalidResourceHandle, "cudaEventRecord: a null event");
  auto marker = std::make_shared<Marker>();
  {
    std::lock_guard lock(scheduler().mutex);
    event->marker = marker;
  }
  enqueue(stream, [marker] {
    Scheduler& sc = scheduler();
    std::lock_guard lock(sc.mutex);
    marker->at = Clock::now();
    marker->done = true;
    sc.changed.notify_all();
  });
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  if (!event) return fail(cudaErrorInvalidResourceHandle, "cudaEventQuery: a null event");
  std::lock_guard lock(scheduler().mutex);
  return !event->marker || event->marker->done ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (!event) return fail(cudaErrorInvalidResourceHandle, "cudaEventSynchronize: a null event");
  std::shared_ptr<Marker> marker;
  {
    std::lock_guard lock(scheduler().mutex);
    marker = event->marker;
  }
  if (marker) wait_for_marker(marker);
  return sticky_error();
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (!start || !end || !start->timing || !end->timing)
    return fail(cudaErrorInvalidResourceHandle,
                "cudaEventElapsedTime: a null event or one made with cudaEventDisableTiming");
  std::shared_ptr<Marker> from, to;
  {
    std::lock_guard lock(scheduler().mutex);
    from = start->marker;
    to = end->marker;
    if (from && to && from->done && to->done) {
      *ms = std::chrono::duration<float, std::milli>(to->at - from->at).count();
      return cudaSuccess;
    }
  }
  if (!from || !to)
    return fail(cudaErrorInvalidResourceHandle, "cudaEventElapsedTime: an event never recorded");
  return cudaErrorNotReady;
}

}  // extern "C"
