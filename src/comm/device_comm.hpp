// Collectives on the buffers of a device the host cannot address (a GPU's), for ZeRO-3's
// parameter store, and the choice between the two ways of running them:
//   nccl    NCCL on the GPU's memory (src/cuda/nccl_communicator.hpp), one rank per GPU;
//   staged  every buffer copied to host memory, the collective run by the host communicator
//           (MPI), the result copied back: for several ranks sharing one GPU (NCCL refuses
//           two ranks on one device) and for clusters without NCCL.
// The flag is `--ddp_backend` (Transformers' name): nccl, mpi (staged) or auto.
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.hpp"
#include "core/device.hpp"

namespace zerolora {

enum class DdpBackend { kAuto, kNccl, kMpi };

// Parses --ddp_backend (auto, nccl, mpi; Transformers' gloo/ccl/hccl are named and refused).
DdpBackend parse_ddp_backend(const std::string& value);
std::string to_string(DdpBackend backend);

// Every rank's `key` (its first 255 bytes) gathered over `comm`: how many ranks hold this
// rank's key, how many of those come before it, and the most ranks holding any one key.
struct KeyCount {
  int before = 0, same = 1, most = 1;
};
KeyCount count_keys(Communicator& comm, const std::string& key);
std::string host_name();

// Where this rank sits among the ranks of its machine, from every rank's host name (launchers
// do not always say: PMIx gives no local rank).
struct MachinePeers {
  int local_rank = 0;  // this rank's index among the ranks with its host name
  int local_size = 1;
};
MachinePeers machine_peers(Communicator& comm);

// The GPU a rank takes: N of --device cuda:N (`explicit_ordinal`), or, for plain `cuda` (-1),
// its local rank modulo the GPUs it sees (local rank r on GPU r; with CUDA_VISIBLE_DEVICES set
// per rank each sees one, its own). UsageError / DeviceError when there is no such GPU.
int choose_gpu_ordinal(int explicit_ordinal, int local_rank, int visible_gpus);

// The backend for ZeRO-3's gathers in GPU memory, from facts every rank gathered alike, so
// every rank decides the same: the most ranks on any one physical GPU (by its UUID and host)
// and whether every rank loads NCCL. NCCL refuses two ranks on one GPU: --ddp_backend nccl is
// then refused (UsageError), auto stages through the host.
struct BackendChoice {
  DdpBackend backend = DdpBackend::kMpi;  // kNccl or kMpi (staged); never kAuto
  std::string reason;                     // why, for the run's notes
};
BackendChoice choose_ddp_backend(DdpBackend requested, int world_size, int ranks_per_gpu,
                                 bool nccl_everywhere);

// Collectives on `device`'s memory through host memory: each call copies its input to a host
// staging buffer, runs the same collective on `host` (whose buffers are host memory), and
// wait() copies the result back to the device. Both must outlive the communicator.
std::unique_ptr<Communicator> make_staged_communicator(Device& device, Communicator& host);

}  // namespace zerolora
