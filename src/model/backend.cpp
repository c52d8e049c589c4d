#include "model/backend.hpp"

#include <charconv>
#include <string>

#include "core/error.hpp"
#include "core/precision.hpp"
#include "ops/cpu_kernels.hpp"
#ifdef ZEROLORA_CUDA
#include "cuda/cuda_device.hpp"
#include "cuda/cuda_kernels.hpp"
#endif

namespace zerolora {

bool cuda_built() {
#ifdef ZEROLORA_CUDA
  return true;
#else
  return false;
#endif
}

std::unique_ptr<Device> make_device(const std::string& spec) {
  if (spec == "cpu") return nullptr;
  int ordinal = 0;
  if (spec.rfind("cuda", 0) != 0 ||
      (spec.size() > 4 &&
       (spec[4] != ':' || spec.size() == 5 ||
        std::from_chars(spec.data() + 5, spec.data() + spec.size(), ordinal).ptr !=
            spec.data() + spec.size())))
    throw UsageError("--device " + spec + ": expected cpu, cuda or cuda:N");
#ifdef ZEROLORA_CUDA
  return std::make_unique<cuda::CudaDevice>(ordinal);
#else
  throw UnsupportedError("--device " + spec +
                         ": this zerolora was built without CUDA (configure with "
                         "-DZEROLORA_CUDA=ON on a machine with the CUDA toolkit)");
#endif
}

template <class P>
std::unique_ptr<Kernels<P>> make_kernels(Runtime& rt) {
  if (rt.device().kind() == DeviceKind::kCpu) return std::make_unique<CpuKernels<P>>(rt);
#ifdef ZEROLORA_CUDA
  if (rt.device().kind() == DeviceKind::kCuda) return cuda::make_cuda_kernels<P>(rt);
#endif
  throw UnsupportedError("no " + std::string(P::kName) + " kernels for device " +
                         rt.device().name() + " in this build");
}

template std::unique_ptr<Kernels<Fp32Policy>> make_kernels<Fp32Policy>(Runtime&);
template std::unique_ptr<Kernels<Bf16Policy>> make_kernels<Bf16Policy>(Runtime&);
template std::unique_ptr<Kernels<Fp64Policy>> make_kernels<Fp64Policy>(Runtime&);

}  // namespace zerolora
