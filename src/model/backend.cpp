#include "model/backend.hpp"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/precision.hpp"
#include "ops/cpu_kernels.hpp"
#include "ops/gemm_peak.hpp"
#ifdef ZEROLORA_CUDA
#include "cuda/cuda_device.hpp"
#include "cuda/cuda_kernels.hpp"
#endif

namespace zerolora {

int cuda_ordinal(const std::string& spec) {
  int ordinal = -1;
  if (spec.rfind("cuda", 0) != 0 ||
      (spec.size() > 4 &&
       (spec[4] != ':' || spec.size() == 5 ||
        std::from_chars(spec.data() + 5, spec.data() + spec.size(), ordinal).ptr !=
            spec.data() + spec.size() ||
        ordinal < 0)))
    throw UsageError("--device " + spec + ": expected cpu, cuda or cuda:N");
  return ordinal;
}

std::unique_ptr<Device> make_device(const std::string& spec) {
  if (spec == "cpu") return nullptr;
  const int ordinal = std::max(0, cuda_ordinal(spec));
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

template <class P>
double measure_device_gemm_gflops(Runtime& rt, Index n, int repetitions) {
  Device& device = rt.device();
  if (device.kind() == DeviceKind::kCpu)
    return measure_gemm_gflops<typename P::Weight>(rt, n, repetitions);
  using Act = typename P::Act;
  using Weight = typename P::Weight;
  const auto elements = static_cast<std::size_t>(n * n);
  std::vector<Act> host_act(elements);
  std::vector<Weight> host_weight(elements);
  for (std::size_t i = 0; i < elements; ++i) {
    host_act[i] = static_cast<Act>(0.001f * static_cast<float>(i % 97));
    host_weight[i] = convert_to<Weight>(0.001f * static_cast<float>(i % 89));
  }
  DeviceBuffer<Act> src, dst;
  DeviceBuffer<Weight> weight;
  upload<Act>(device, src, host_act);
  upload<Weight>(device, weight, host_weight);
  dst.ensure(device, elements);
  auto kernels = make_kernels<P>(rt);
  auto run = [&] {
    kernels->linear_forward(Mat<Act>::dense(dst.data(), n, n), src.data(), weight.data(), n, false);
  };
  run();  // plans, first touches
  device.synchronize();
  double best = 1e30;
  for (int r = 0; r < repetitions; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    device.synchronize();
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) / best /
         1e9;
}

template double measure_device_gemm_gflops<Fp32Policy>(Runtime&, Index, int);
template double measure_device_gemm_gflops<Bf16Policy>(Runtime&, Index, int);

template std::unique_ptr<Kernels<Fp32Policy>> make_kernels<Fp32Policy>(Runtime&);
template std::unique_ptr<Kernels<Bf16Policy>> make_kernels<Bf16Policy>(Runtime&);
template std::unique_ptr<Kernels<Fp64Policy>> make_kernels<Fp64Policy>(Runtime&);

}  // namespace zerolora
