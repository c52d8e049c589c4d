// NCCL collectives on one GPU's memory, one rank per GPU, for ZeRO-3's parameter store
// (comm/device_comm.hpp). The unique id comes from rank 0 over the host communicator (MPI);
// collectives run on a communication stream of their own, ordered after the compute stream's
// work by an event at issue, and wait() makes the compute stream wait for them by another: the
// host never blocks in a step. NCCL runs in its blocking mode, every call from the thread that
// owns the communicator; a watchdog thread times those calls (connecting to the peers blocks)
// and the collectives in flight, and ends the process (exit 70: the launcher then ends every
// rank) when one has taken longer than the timeout or NCCL reports an asynchronous error,
// naming the collective, its size and the rank. Destroyed while an exception unwinds, it
// aborts the communicator rather than wait for peers that may be gone.
//
// libnccl.so.2 is loaded at run time (like cuBLASLt): CPU runs of a CUDA build never load it.
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.hpp"
#include "cuda/cuda_device.hpp"

namespace zerolora::cuda {

// Whether libnccl.so.2 loads here (its version in `version`, or why not in `why`).
bool nccl_loadable(std::string* version_or_why = nullptr);

// Collective on `device`'s memory over NCCL with as many ranks as `bootstrap`, which must stay
// alive (the id's broadcast, barrier, abort). Throws DeviceError naming the call when NCCL
// cannot start; timeout_seconds > 0.
std::unique_ptr<Communicator> make_nccl_communicator(CudaDevice& device, Communicator& bootstrap,
                                                     double timeout_seconds);

}  // namespace zerolora::cuda
