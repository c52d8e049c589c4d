#include "zero3/run_device.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "model/backend.hpp"
#ifdef ZEROLORA_CUDA
#include "cuda/cuda_device.hpp"
#include "cuda/nccl_communicator.hpp"
#endif

namespace zerolora {

RunDevice open_run_device(const std::string& spec, DdpBackend backend, Communicator& comm) {
  RunDevice run;
  if (spec == "cpu") {
    if (backend == DdpBackend::kNccl)
      throw UsageError("--ddp_backend nccl needs --device cuda: NCCL runs on GPUs");
#ifdef ZEROLORA_CUDA
    // --device cpu is the default: where a GPU is visible the run says so (Transformers'
    // Trainer would have taken it), for a run on the CPU is months where the GPU's is hours.
    // A GPU the backend cannot train on (compute capability below 8.0) is named with why.
    if (comm.rank() == 0)
      if (const int visible = cuda::visible_gpus(); visible > 0) {
        std::string unfit;
        int fit = 0, first_fit = -1;
        for (int ordinal = 0; ordinal < visible; ++ordinal) {
          const std::string why = cuda::gpu_summary(ordinal).shortfall;
          if (why.empty()) {
            if (fit++ == 0) first_fit = ordinal;
          } else if (unfit.empty()) {
            unfit = "cuda:" + std::to_string(ordinal) + " cannot: " + why;
          }
        }
        // Where some GPU is unfit, name a fit one: --device cuda would take cuda:0.
        if (fit == 0) {
          run.note = "device: the CPU (" + unfit + ")";
        } else {
          std::string device = "--device cuda";
          if (!unfit.empty()) device.append(1, ':').append(std::to_string(first_fit));
          run.note = "device: the CPU, though " + std::to_string(fit) +
                     (fit == 1 ? " GPU is" : " GPUs are") + " visible: " + device + " trains there";
          if (!unfit.empty()) run.note += " (" + unfit + ")";
        }
      }
#endif
    return run;
  }
  const int explicit_ordinal = cuda_ordinal(spec);
#ifdef ZEROLORA_CUDA
  const MachinePeers peers = machine_peers(comm);
  std::string why;
  const int visible = cuda::visible_gpus(&why);
  if (visible == 0) throw DeviceError("--device " + spec + ": " + why);
  auto gpu = std::make_unique<cuda::CudaDevice>(
      choose_gpu_ordinal(explicit_ordinal, peers.local_rank, visible));
  // Which ranks hold the same physical GPU: host name and GPU UUID from every rank.
  const KeyCount sharing = count_keys(comm, gpu->uuid() + "@" + host_name());
  const int ranks_per_gpu = sharing.most;
  // After that all-gather every rank's CUDA context exists, and before the all-reduce below no
  // rank can have allocated anything of the model.
  run.room = DeviceRoom{gpu->name(), static_cast<double>(gpu->free_bytes()), sharing.same};
  const bool want_nccl =
      backend != DdpBackend::kMpi && (comm.size() > 1 || backend == DdpBackend::kNccl);
  const std::int64_t loaded = comm.all_reduce_sum<std::int64_t>(want_nccl && cuda::nccl_loadable());
  const BackendChoice choice =
      choose_ddp_backend(backend, comm.size(), ranks_per_gpu, loaded == comm.size());
  run.backend = choice.backend;
  run.note = "device: " + gpu->name() + ", local rank " + std::to_string(peers.local_rank) +
             " of " + std::to_string(peers.local_size) + " on this machine; " + choice.reason;
  run.device = std::move(gpu);
  return run;
#else
  (void)explicit_ordinal;
  (void)comm;
  run.device = make_device(spec);  // throws: this build has no CUDA
  return run;
#endif
}

std::unique_ptr<Communicator> make_parameter_communicator(Device& device, DdpBackend backend,
                                                          Communicator& host,
                                                          double timeout_seconds) {
  if (device.host_accessible()) return nullptr;
#ifdef ZEROLORA_CUDA
  if (backend == DdpBackend::kNccl) {
    auto* gpu = dynamic_cast<cuda::CudaDevice*>(&device);
    if (!gpu) throw InternalError("NCCL asked for on " + device.name());
    return cuda::make_nccl_communicator(*gpu, host, timeout_seconds);
  }
#else
  (void)timeout_seconds;
#endif
  if (backend == DdpBackend::kNccl)
    throw UnsupportedError("--ddp_backend nccl: this zerolora was built without CUDA");
  return make_staged_communicator(device, host);
}

}  // namespace zerolora
