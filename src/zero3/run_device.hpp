// A training run's device, placed among the machine's GPUs, and the communicator ZeRO-3's
// parameter store gathers over in that device's memory (comm/device_comm.hpp):
//   --device cpu        the host; the store uses the run's own communicator
//   --device cuda       local rank r on GPU r (shared round-robin when the ranks outnumber the
//                       GPUs), NCCL or the host-staged transport by --ddp_backend
//   --device cuda:N     every rank of the machine on GPU N
// The local rank and whether ranks share a GPU are facts gathered from every rank (host names,
// GPU UUIDs) over the run's communicator, not read from the launcher's variables.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "comm/communicator.hpp"
#include "comm/device_comm.hpp"
#include "core/device.hpp"

namespace zerolora {

// A GPU's room for the run, for the up-front memory check: its name, what it had free when
// opened (before any rank of the run allocated there), and how many of the run's ranks share it
// (this rank included).
struct DeviceRoom {
  std::string device_name;
  double free_bytes = 0;
  int ranks_sharing = 1;
};

struct RunDevice {
  std::unique_ptr<Device> device;  // null: the runtime's host device
  DdpBackend backend = DdpBackend::kMpi;
  // Where this rank runs and why, for the run's notes (on the CPU: empty unless a GPU is
  // visible, which rank 0 of a CUDA build asks the CUDA runtime once).
  std::string note;
  std::optional<DeviceRoom> room;  // on a GPU
};

// Every rank of `comm` calls it (GPUs: two all-gathers and an all-reduce; each rank reads its
// GPU's free memory between the last two, when every rank's CUDA context exists and before any
// rank can have loaded the model there). Throws UsageError / UnsupportedError / DeviceError
// naming the flag when the spec, the backend or the machine's GPUs do not allow it: alike on
// every rank where the gathered facts decide, otherwise on the rank that cannot open its GPU
// (the rank guard then ends the others).
RunDevice open_run_device(const std::string& spec, DdpBackend backend, Communicator& comm);

// The communicator for the store's buffers on `device`: null when `host` serves (the host's
// memory), otherwise NCCL or `host` staged through host memory, by `backend` (RunDevice's).
// `host` must outlive it.
std::unique_ptr<Communicator> make_parameter_communicator(Device& device, DdpBackend backend,
                                                          Communicator& host,
                                                          double timeout_seconds);

}  // namespace zerolora
