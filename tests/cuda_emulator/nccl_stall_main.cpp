// NCCL stall drill for `mpirun -np 2` on the CUDA emulator's GPUs (ZEROLORA_EMULATED_GPUS=2):
// both ranks open their GPU with NCCL and a 3 s --ddp_timeout; rank 1 then stalls (alive, never
// joining) while rank 0 all-gathers. nccl_stall_test.sh expects rank 0's watchdog to end the
// job within seconds, naming the collective, with the watchdog's exit status. As real NCCL, the
// emulated one returns at once and its stream waits for the missing rank, so rank 0's host
// waits in the device's synchronisation, as at the end of a training step, and the watchdog
// finds the collective pending ("did not finish within").
//   zerolora_nccl_stall_drill
#include <chrono>
#include <cstdio>
#include <thread>

#include "comm/rank_guard.hpp"
#include "core/device.hpp"
#include "zero3/run_device.hpp"

int main() {
  using namespace zerolora;
  auto comm = make_communicator();
  return run_guarded(*comm, [&] {
    RunDevice run = open_run_device("cuda", DdpBackend::kNccl, *comm);
    auto nccl = make_parameter_communicator(*run.device, DdpBackend::kNccl, *comm, 3.0);
    DeviceBuffer<std::byte> send, recv;
    send.ensure(*run.device, 4096);
    recv.ensure(*run.device, 4096 * 2);
    if (comm->rank() == 1) {
      std::this_thread::sleep_for(std::chrono::seconds(60));  // stuck, not gone
      return 0;
    }
    nccl->all_gather_async(send.data(), recv.data(), 4096)->wait();
    run.device->synchronize();
    std::printf("rank 0: the all-gather returned without rank 1\n");
    return 0;
  });
}
