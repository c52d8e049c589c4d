// OpenMPI communicator. One communication thread runs every collective, in issue order,
// with blocking MPI calls: OpenMPI only progresses non-blocking collectives while some MPI
// call runs, so a dedicated thread is what makes an all-gather really overlap the caller's
// compute (the benchmark measures it). Idle MPI waits yield the CPU
// (mpi_yield_when_idle), which matters when ranks outnumber cores.
#include <mpi.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>

#include "comm/communicator.hpp"
#include "comm/launch.hpp"
#include "core/error.hpp"

namespace zerolora {
namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

MPI_Datatype mpi_type(ElementType type) {
  switch (type) {
    case ElementType::kFloat:
      return MPI_FLOAT;
    case ElementType::kDouble:
      return MPI_DOUBLE;
    case ElementType::kInt64:
      return MPI_INT64_T;
    case ElementType::kUInt64:
      return MPI_UINT64_T;
  }
  return MPI_BYTE;
}

int checked_count(std::size_t count) {
  if (count > static_cast<std::size_t>(std::numeric_limits<int>::max()))
    throw UnsupportedError("a collective of " + std::to_string(count) +
                           " elements per rank exceeds MPI's int count; use more ranks");
  return static_cast<int>(count);
}

struct Task {
  std::function<void()> run;
  std::size_t bytes = 0;
  std::mutex mutex;
  std::condition_variable cv;
  bool finished = false;
  std::exception_ptr error;
};

class MpiCommunicator;

class MpiRequest : public CommRequest {
 public:
  MpiRequest(std::shared_ptr<Task> task, MpiCommunicator& comm)
      : task_(std::move(task)), comm_(comm) {}
  ~MpiRequest() override {
    try {
      wait();
    } catch (...) {
    }
  }
  void wait() override;
  bool done() override {
    std::lock_guard lock(task_->mutex);
    return task_->finished;
  }

 private:
  std::shared_ptr<Task> task_;
  MpiCommunicator& comm_;
  bool waited_ = false;
};

class MpiCommunicator : public Communicator {
 public:
  MpiCommunicator() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      // Before MPI_Init: waiting ranks yield the core instead of spinning on it.
      setenv("OMPI_MCA_mpi_yield_when_idle", "1", 0);
      int provided = 0;
      MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
      if (provided < MPI_THREAD_SERIALIZED)
        throw UnsupportedError(
            "this MPI library does not support calls from a communication thread");
      owns_mpi_ = true;
    }
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    thread_ = std::thread([this] { loop(); });
  }

  ~MpiCommunicator() override {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
    MPI_Comm_free(&comm_);
    if (owns_mpi_) MPI_Finalize();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi"; }

  Request all_gather_async(const void* send, void* recv, std::size_t bytes) override {
    const int count = checked_count(bytes);
    return submit(bytes * static_cast<std::size_t>(size_), [=, this] {
      MPI_Allgather(send == recv ? MPI_IN_PLACE : send, count, MPI_BYTE, recv, count, MPI_BYTE,
                    comm_);
    });
  }
  Request reduce_scatter_async(const void* send, void* recv, std::size_t count,
                               ElementType type) override {
    const int n = checked_count(count);
    return submit(count * element_bytes(type) * static_cast<std::size_t>(size_), [=, this] {
      MPI_Reduce_scatter_block(send, recv, n, mpi_type(type), MPI_SUM, comm_);
    });
  }
  Request all_reduce_async(void* data, std::size_t count, ElementType type) override {
    const int n = checked_count(count);
    return submit(count * element_bytes(type), [=, this] {
      MPI_Allreduce(MPI_IN_PLACE, data, n, mpi_type(type), MPI_SUM, comm_);
    });
  }
  Request broadcast_async(void* data, std::size_t bytes, int root) override {
    const int n = checked_count(bytes);
    return submit(bytes, [=, this] { MPI_Bcast(data, n, MPI_BYTE, root, comm_); });
  }
  void barrier() override {
    submit(0, [this] { MPI_Barrier(comm_); })->wait();
  }
  [[noreturn]] void abort(int exit_code) override {
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);
  }

  CommStats stats() const override {
    std::lock_guard lock(mutex_);
    return stats_;
  }
  void reset_stats() override {
    std::lock_guard lock(mutex_);
    stats_ = {};
  }
  void add_waited(double seconds) {
    std::lock_guard lock(mutex_);
    stats_.waited_seconds += seconds;
  }

 private:
  Request submit(std::size_t bytes, std::function<void()> run) {
    auto task = std::make_shared<Task>();
    task->run = std::move(run);
    task->bytes = bytes;
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(task);
    }
    cv_.notify_all();
    return std::make_unique<MpiRequest>(task, *this);
  }

  void loop() {
    for (;;) {
      std::shared_ptr<Task> task;
      {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        task = queue_.front();
        queue_.pop_front();
      }
      const double start = now_seconds();
      try {
        task->run();
      } catch (...) {
        task->error = std::current_exception();
      }
      {
        std::lock_guard lock(mutex_);
        stats_.busy_seconds += now_seconds() - start;
        stats_.bytes += static_cast<std::int64_t>(task->bytes);
        stats_.calls += 1;
      }
      {
        std::lock_guard lock(task->mutex);
        task->finished = true;
      }
      task->cv.notify_all();
    }
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  bool owns_mpi_ = false;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Task>> queue_;
  bool stopping_ = false;
  CommStats stats_;
  std::thread thread_;
};

void MpiRequest::wait() {
  if (waited_) return;
  waited_ = true;
  const double start = now_seconds();
  std::unique_lock lock(task_->mutex);
  task_->cv.wait(lock, [this] { return task_->finished; });
  lock.unlock();
  comm_.add_waited(now_seconds() - start);
  if (task_->error) std::rethrow_exception(task_->error);
}

}  // namespace

std::unique_ptr<Communicator> make_communicator() {
  const LaunchInfo launch = detect_launch();
  if (!launch.multi_rank()) return make_local_communicator();
  auto comm = std::make_unique<MpiCommunicator>();
  char version[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int length = 0;
  MPI_Get_library_version(version, &length);
  std::string library(version, static_cast<std::size_t>(length));
  library = library.substr(0, library.find_first_of(",\n"));  // "Open MPI v4.1.4, package: ..."
  check_mpi_world(launch, comm->size(), comm->rank(), library);
  return comm;
}

}  // namespace zerolora
