// The CUDA emulator's NCCL (built as libnccl.so.2, which src/cuda/nccl_communicator.cpp loads):
// each collective is the MPI collective of the same meaning, run on the stream it is given
// after the stream's earlier work (the emulated GPU's memory is host memory), as NCCL's kernels
// run; the call returns once it is queued, and a failure in the collective itself is the
// communicator's asynchronous error (ncclCommGetAsyncError), as with NCCL. It checks what NCCL
// would refuse or what would fault on a GPU: buffers outside device memory, a communicator whose
// ranks disagree on its size. Unlike NCCL it lets several ranks share the one emulated GPU.
// Nothing here is NVIDIA's code: it runs the communicator's own logic (the unique id's
// bootstrap, events and streams, requests, the watchdog, teardown), not NCCL's transports.
// The ranks of one communicator are MPI_COMM_WORLD's processes that name the same unique id.
#include <mpi.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "emulator_state.hpp"

struct ncclComm {
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0, size = 0;
  std::string last_error;
  std::atomic<int> queued{0};  // collectives queued on a stream and not yet run
  std::atomic<ncclResult_t> async_error{ncclSuccess};
};

namespace {

std::size_t type_bytes(ncclDataType_t type) {
  switch (type) {
    case ncclInt8:
    case ncclUint8:
      return 1;
    case ncclFloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
      return 8;
    default:
      return 0;  // a type the emulator does not know: the call is refused
  }
}

MPI_Datatype mpi_type(ncclDataType_t type) {
  switch (type) {
    case ncclInt8:
      return MPI_INT8_T;
    case ncclUint8:
      return MPI_UINT8_T;
    case ncclInt32:
      return MPI_INT32_T;
    case ncclUint32:
      return MPI_UINT32_T;
    case ncclInt64:
      return MPI_INT64_T;
    case ncclUint64:
      return MPI_UINT64_T;
    case ncclFloat32:
      return MPI_FLOAT;
    case ncclFloat64:
      return MPI_DOUBLE;
    default:
      return MPI_DATATYPE_NULL;
  }
}

// NCCL reports through its result and ncclGetLastError, never through CUDA's last error.
ncclResult_t invalid(ncclComm_t comm, const std::string& message) {
  const std::string text = "NCCL emulator: " + message;
  if (comm) comm->last_error = text;
  std::fprintf(stderr, "%s\n", text.c_str());
  return ncclInvalidArgument;
}

// Both buffers in device memory, as NCCL requires.
ncclResult_t check_buffers(ncclComm_t comm, const char* call, const void* send,
                           std::size_t send_bytes, const void* recv, std::size_t recv_bytes) {
  if (!comm || (comm->size > 1 && comm->comm == MPI_COMM_NULL))
    return invalid(comm, std::string(call) + ": no communicator (aborted?)");
  if (send_bytes && !zl_emu_is_device_range(send, send_bytes))
    return invalid(comm, std::string(call) + ": the send buffer is not device memory");
  if (recv_bytes && !zl_emu_is_device_range(recv, recv_bytes))
    return invalid(comm, std::string(call) + ": the receive buffer is not device memory");
  return ncclSuccess;
}

// One rank's collective: the data where the result goes.
ncclResult_t copy(const void* send, void* recv, std::size_t bytes) {
  if (send != recv && bytes) std::memmove(recv, send, bytes);
  return ncclSuccess;
}

// MPI counts are ints: a larger collective is refused rather than wrapped.
bool fits_int(std::size_t count) {
  return count <= static_cast<std::size_t>(std::numeric_limits<int>::max());
}

ncclResult_t mpi_result(ncclComm_t comm, int status, const char* call) {
  if (status == MPI_SUCCESS) return ncclSuccess;
  comm->last_error =
      std::string("NCCL emulator: ") + call + ": MPI error " + std::to_string(status);
  return ncclSystemError;
}

// Queues `collective` on `stream`; its failure becomes the communicator's asynchronous error.
ncclResult_t on_stream(ncclComm_t comm, cudaStream_t stream,
                       std::function<ncclResult_t()> collective) {
  ++comm->queued;
  zerolora::cuda_emulator::enqueue(
      stream,
      [comm, collective = std::move(collective)] {
        // An aborted communicator runs nothing more.
        const ncclResult_t result =
            comm->size > 1 && comm->comm == MPI_COMM_NULL ? ncclInvalidUsage : collective();
        ncclResult_t none = ncclSuccess;
        if (result != ncclSuccess) comm->async_error.compare_exchange_strong(none, result);
        --comm->queued;
      },
      true);
  return ncclSuccess;
}

// Until the communicator's queued collectives have run (NCCL's finalize flushes them).
void wait_for_queued(ncclComm_t comm) {
  while (comm->queued.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

}  // namespace

extern "C" {

ncclResult_t ncclGetVersion(int* version) {
  *version = 22800;  // presents itself as NCCL 2.28.0
  return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  std::random_device entropy;
  for (std::size_t i = 0; i < sizeof id->internal; i += sizeof(unsigned)) {
    const unsigned v = entropy();
    std::memcpy(id->internal + i, &v, sizeof v);
  }
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  *comm = nullptr;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (nranks == 1 && rank == 0) {  // alone: no MPI (a one-rank run may never start it)
    *comm = new ncclComm{MPI_COMM_NULL, 0, 1, {}};
    return ncclSuccess;
  }
  if (!initialized)
    return invalid(nullptr,
                   "ncclCommInitRank of several ranks before MPI_Init (the emulator "
                   "bootstraps over MPI)");
  // The emulated collectives call MPI from the caller's thread, beside whatever MPI calls the
  // program's other threads make.
  int provided = MPI_THREAD_SINGLE;
  MPI_Query_thread(&provided);
  if (provided < MPI_THREAD_MULTIPLE)
    return invalid(nullptr, "ncclCommInitRank: MPI was not initialized with MPI_THREAD_MULTIPLE");
  std::uint32_t color = 2166136261u;  // FNV-1a of the id: the same on every rank that has it
  for (char c : id.internal) color = (color ^ static_cast<unsigned char>(c)) * 16777619u;
  auto created = new ncclComm;
  int status =
      MPI_Comm_split(MPI_COMM_WORLD, static_cast<int>(color & 0x7fffffff), rank, &created->comm);
  if (status != MPI_SUCCESS) {
    delete created;
    return ncclSystemError;
  }
  MPI_Comm_rank(created->comm, &created->rank);
  MPI_Comm_size(created->comm, &created->size);
  if (created->size != nranks || created->rank != rank) {
    const std::string why = "ncclCommInitRank: " + std::to_string(created->size) +
                            " ranks share the id, rank " + std::to_string(rank) + " of " +
                            std::to_string(nranks) + " expected";
    MPI_Comm_free(&created->comm);
    delete created;
    return invalid(nullptr, why);
  }
  *comm = created;
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* error) {
  *error = comm ? comm->async_error.load() : ncclSuccess;
  return comm ? ncclSuccess : ncclInvalidArgument;
}

// Blocks until the queued collectives have run (a stalled rank keeps it waiting: the caller's
// watchdog times it).
ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  if (!comm) return ncclInvalidArgument;
  wait_for_queued(comm);
  return comm->async_error.load();
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (!comm) return ncclInvalidArgument;
  wait_for_queued(comm);
  if (comm->comm != MPI_COMM_NULL) MPI_Comm_free(&comm->comm);
  delete comm;
  return ncclSuccess;
}

// From any thread (the communicator's watchdog calls it): no MPI call, the communicator leaks.
// ZEROLORA_EMULATED_NCCL_ABORT_HANGS=1: the abort never returns, as a real one can behind a
// stuck collective (NVIDIA/nccl#829).
ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (!comm) return ncclInvalidArgument;
  if (const char* hangs = std::getenv("ZEROLORA_EMULATED_NCCL_ABORT_HANGS"); hangs && *hangs == '1')
    for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
  comm->comm = MPI_COMM_NULL;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "no error";
    case ncclSystemError:
      return "unhandled system error";
    case ncclInvalidArgument:
      return "invalid argument";
    case ncclInvalidUsage:
      return "invalid usage";
    case ncclInProgress:
      return "NCCL operation in progress";
    default:
      return "NCCL error";
  }
}

const char* ncclGetLastError(ncclComm_t comm) {
  return comm ? comm->last_error.c_str() : "";
}

ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t type,
                           ncclComm_t comm, cudaStream_t stream) {
  const std::size_t bytes = count * type_bytes(type);
  if (!comm) return invalid(comm, "ncclAllGather: no communicator");
  if (type_bytes(type) == 0)
    return invalid(comm, "ncclAllGather: a datatype the emulator does not know");
  if (auto r = check_buffers(comm, "ncclAllGather", send, bytes, recv, bytes * comm->size))
    return r;
  // In place when the send buffer is this rank's slot of the receive buffer (NCCL's rule).
  const bool in_place = send == static_cast<char*>(recv) + bytes * comm->rank;
  if (comm->size == 1) return on_stream(comm, stream, [=] { return copy(send, recv, bytes); });
  if (!fits_int(bytes)) return invalid(comm, "ncclAllGather: over 2^31 bytes per rank");
  return on_stream(comm, stream, [=] {
    return mpi_result(comm,
                      MPI_Allgather(in_place ? MPI_IN_PLACE : send, static_cast<int>(bytes),
                                    MPI_BYTE, recv, static_cast<int>(bytes), MPI_BYTE, comm->comm),
                      "MPI_Allgather");
  });
}

ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t count, ncclDataType_t type,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  const std::size_t bytes = count * type_bytes(type);
  if (!comm) return invalid(comm, "ncclReduceScatter: no communicator");
  if (op != ncclSum || mpi_type(type) == MPI_DATATYPE_NULL)
    return invalid(comm, "ncclReduceScatter: the emulator sums fp32, fp64 and integers only");
  if (auto r = check_buffers(comm, "ncclReduceScatter", send, bytes * comm->size, recv, bytes))
    return r;
  if (comm->size == 1) return on_stream(comm, stream, [=] { return copy(send, recv, bytes); });
  if (!fits_int(count)) return invalid(comm, "ncclReduceScatter: over 2^31 elements per rank");
  // NCCL's in place (recv is this rank's slot of send) is not MPI's: reduce from a copy.
  const bool in_place = send == static_cast<char*>(recv) - bytes * comm->rank;
  return on_stream(comm, stream, [=] {
    std::vector<char> whole;
    if (in_place)
      whole.assign(static_cast<const char*>(send),
                   static_cast<const char*>(send) + bytes * comm->size);
    return mpi_result(
        comm,
        MPI_Reduce_scatter_block(in_place ? whole.data() : send, recv, static_cast<int>(count),
                                 mpi_type(type), MPI_SUM, comm->comm),
        "MPI_Reduce_scatter_block");
  });
}

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  const std::size_t bytes = count * type_bytes(type);
  if (op != ncclSum || mpi_type(type) == MPI_DATATYPE_NULL)
    return invalid(comm, "ncclAllReduce: the emulator sums fp32, fp64 and integers only");
  if (auto r = check_buffers(comm, "ncclAllReduce", send, bytes, recv, bytes)) return r;
  if (comm->size == 1) return on_stream(comm, stream, [=] { return copy(send, recv, bytes); });
  if (!fits_int(count)) return invalid(comm, "ncclAllReduce: over 2^31 elements");
  return on_stream(comm, stream, [=] {
    return mpi_result(comm,
                      MPI_Allreduce(send == recv ? MPI_IN_PLACE : send, recv,
                                    static_cast<int>(count), mpi_type(type), MPI_SUM, comm->comm),
                      "MPI_Allreduce");
  });
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type,
                           int root, ncclComm_t comm, cudaStream_t stream) {
  const std::size_t bytes = count * type_bytes(type);
  if (!comm) return invalid(comm, "ncclBroadcast: no communicator");
  if (type_bytes(type) == 0)
    return invalid(comm, "ncclBroadcast: a datatype the emulator does not know");
  if (auto r = check_buffers(comm, "ncclBroadcast", comm->rank == root ? send : nullptr,
                             comm->rank == root ? bytes : 0, recv, bytes))
    return r;
  if (!fits_int(bytes)) return invalid(comm, "ncclBroadcast: over 2^31 bytes");
  return on_stream(comm, stream, [=] {
    if (comm->rank == root) copy(send, recv, bytes);
    if (comm->size == 1) return ncclSuccess;
    return mpi_result(comm, MPI_Bcast(recv, static_cast<int>(bytes), MPI_BYTE, root, comm->comm),
                      "MPI_Bcast");
  });
}

}  // extern "C"
