// Collectives between the ranks of a run, behind one interface chosen at run time:
//   LocalCommunicator  one process, no MPI (when no launcher started this process as one rank
//                      of several: comm/launch.hpp)
//   MpiCommunicator    MPI; `mpirun -np W zerolora ...` or `srun` on one machine or many
// and, for the buffers of a device the host cannot address (a GPU's), comm/device_comm.hpp:
//   staged             any of the above, each buffer copied through host memory
//   NcclCommunicator   NCCL on the GPU's memory (src/cuda/nccl_communicator.hpp)
// Buffers are plain pointers; device_memory() says which memory they point into.
//
// Every collective has a non-blocking form returning a Request; the blocking form is the
// same plus wait(). Collectives complete in the order they were issued, and every rank must
// issue the same collectives in the same order: zerolora derives them from a static schedule.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>

namespace zerolora {

enum class ElementType { kFloat, kDouble, kInt64, kUInt64 };

template <class T>
constexpr ElementType element_type_of() {
  if constexpr (std::is_same_v<T, float>)
    return ElementType::kFloat;
  else if constexpr (std::is_same_v<T, double>)
    return ElementType::kDouble;
  else if constexpr (std::is_same_v<T, std::int64_t>)
    return ElementType::kInt64;
  else
    return ElementType::kUInt64;
}

inline std::size_t element_bytes(ElementType type) {
  return type == ElementType::kFloat ? 4 : 8;
}

// A collective in flight; waiting (or destroying) completes it.
class CommRequest {
 public:
  virtual ~CommRequest() = default;
  virtual void wait() = 0;
  virtual bool done() = 0;
};
using Request = std::unique_ptr<CommRequest>;

// Time spent in communication, for the overlap figures: busy = a collective running,
// waited = the caller blocked on one (exposed); busy - waited was hidden behind compute.
struct CommStats {
  double busy_seconds = 0;
  double waited_seconds = 0;
  std::int64_t bytes = 0;
  std::int64_t calls = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;
  // True when the buffers passed to the collectives are the memory of the run's device, one
  // the host cannot address (a GPU's); false: host memory.
  virtual bool device_memory() const { return false; }

  // recv[r * bytes_per_rank ...] = rank r's send.
  virtual Request all_gather_async(const void* send, void* recv, std::size_t bytes_per_rank) = 0;
  // recv (count_per_rank elements) = sum over ranks of send[rank() * count_per_rank ...].
  virtual Request reduce_scatter_async(const void* send, void* recv, std::size_t count_per_rank,
                                       ElementType type) = 0;
  // data = sum over ranks of data, in place.
  virtual Request all_reduce_async(void* data, std::size_t count, ElementType type) = 0;
  virtual Request broadcast_async(void* data, std::size_t bytes, int root) = 0;
  virtual void barrier() = 0;
  // Ends every rank of the run now (a failure on one rank must not leave the others waiting).
  [[noreturn]] virtual void abort(int exit_code) = 0;

  virtual CommStats stats() const = 0;
  virtual void reset_stats() = 0;

  void all_gather(const void* send, void* recv, std::size_t bytes_per_rank) {
    all_gather_async(send, recv, bytes_per_rank)->wait();
  }
  template <class T>
  void all_reduce(std::span<T> data) {
    all_reduce_async(data.data(), data.size(), element_type_of<T>())->wait();
  }
  template <class T>
  T all_reduce_sum(T value) {
    all_reduce(std::span<T>(&value, 1));
    return value;
  }
  template <class T>
  void reduce_scatter(const T* send, T* recv, std::size_t count_per_rank) {
    reduce_scatter_async(send, recv, count_per_rank, element_type_of<T>())->wait();
  }
  void broadcast(void* data, std::size_t bytes, int root) {
    broadcast_async(data, bytes, root)->wait();
  }
};

// MpiCommunicator when a launcher started this process as one rank of several, checked to have
// joined the world the launcher started (ConfigError otherwise: comm/launch.hpp);
// LocalCommunicator otherwise.
std::unique_ptr<Communicator> make_communicator();
std::unique_ptr<Communicator> make_local_communicator();

}  // namespace zerolora
