#include "zero3/run_device.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "model/backend.hpp"
#ifdef ZEROLORA_CUDA
#include "cuda/cuda_device.hpp"
#include "cuda/nccl_communicator.hpp"
#endif

namespace zerolora {

RunDevice open_run_device(const std::string& spec, DdpBackend backend, const LaunchInfo& launch,
                          int world_size) {
  RunDevice run;
  if (spec == "cpu") {
    if (backend == DdpBackend::kNccl)
      throw UsageError("--ddp_backend nccl needs --device cuda: NCCL runs on GPUs");
    return run;
  }
  const int explicit_ordinal = cuda_ordinal(spec);
#ifdef ZEROLORA_CUDA
  std::string why;
  const int visible = cuda::visible_gpus(&why);
  if (visible == 0) throw DeviceError("--device " + spec + ": " + why);
  const bool nccl = world_size > 1 || backend == DdpBackend::kNccl ? cuda::nccl_loadable() : false;
  const bool launched = launch.multi_rank();
  const GpuPlacement placement =
      place_on_gpu(explicit_ordinal, backend, launched ? launch.local_rank : 0,
                   launched ? std::max(1, launch.local_size) : 1, world_size, visible, nccl);
  run.device = std::make_unique<cuda::CudaDevice>(placement.ordinal);
  run.backend = placement.backend;
  run.note = "device: " + run.device->name() + ", " + placement.reason;
  return run;
#else
  (void)explicit_ordinal;
  (void)launch;
  (void)world_size;
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
