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

// Which GPU this rank uses and over what its collectives on device memory run, from
// --device, --ddp_backend, the launch (ranks on this machine) and the GPUs this process sees.
struct GpuPlacement {
  int ordinal = 0;                        // CUDA device index among the visible ones
  DdpBackend backend = DdpBackend::kMpi;  // kNccl or kMpi (staged); never kAuto
  std::string reason;                     // why, for the run's notes
};

// `explicit_ordinal` is N of --device cuda:N (-1 for plain `cuda`). Plain `cuda` gives local
// rank r the GPU r; when the machine's ranks outnumber its GPUs they share them round-robin,
// which NCCL refuses (UsageError when --ddp_backend nccl asks for it) and auto turns into the
// staged transport. --device cuda:N pins every rank of the machine to GPU N (one rank per
// machine for NCCL). `nccl_available` is false when this build or this machine has no NCCL.
GpuPlacement place_on_gpu(int explicit_ordinal, DdpBackend requested, int local_rank,
                          int local_size, int world_size, int visible_gpus, bool nccl_available);

// Collectives on `device`'s memory through host memory: each call copies its input to a host
// staging buffer, runs the same collective on `host` (whose buffers are host memory), and
// wait() copies the result back to the device. Both must outlive the communicator.
std::unique_ptr<Communicator> make_staged_communicator(Device& device, Communicator& host);

}  // namespace zerolora
