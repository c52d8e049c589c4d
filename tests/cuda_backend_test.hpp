// The CudaBackend fixture of the CUDA tests (test_cuda_ops.cpp, test_cuda_attention.cpp,
// test_cuda_lora.cpp, test_cuda_model.cpp, test_cuda_runtime.cpp): a GPU runtime beside a CPU
// one, device copies of host values that the fixture keeps alive, and the bound of one fp32 op.
// Where this process sees no GPU (CI, the development machines) every test of the fixture is
// skipped, saying why.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/buffer.hpp"
#include "core/precision.hpp"
#include "core/runtime.hpp"
#include "cuda/cuda_device.hpp"
#ifdef ZEROLORA_CUDNN
#include "cuda/cudnn_attention.hpp"
#endif
#include "model/backend.hpp"
#include "ops/cpu_kernels.hpp"
#include "test_util.hpp"

// Not in an anonymous namespace: the test files share one fixture type (gtest requires it of a
// test suite's tests).
namespace zerolora::cuda_test {

// Relative error bound of one fp32 op on the GPU against the CPU op: both accumulate in fp32
// in different orders (cuBLASLt's split of K, block reductions vs OpenMP SIMD lanes).
inline constexpr double kFp32Op = 1e-5;

inline std::vector<float> random_values(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

// Whether the GPU's training repeats its bits: its bf16 attention's backward is cuDNN's
// deterministic one (the default) or the reference kernel; cuDNN's atomic one
// (ZEROLORA_CUDNN_BACKWARD) repeats to rounding only. The emulator's cuDNN stand-in sums in a
// fixed order under either name, so its runs hold the atomic one's glue (q/k/v's fused gradient
// layout) to the same bits too.
inline bool attention_backward_repeats() {
#if defined(ZEROLORA_CUDNN) && !defined(ZEROLORA_CUDNN_STANDIN)
  return cuda::cudnn_backward_from_environment() == cuda::CudnnBackward::kDeterministic;
#else
  return true;
#endif
}

class CudaBackend : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    if (cuda::visible_gpus(&why) == 0) GTEST_SKIP() << why;
    gpu_ = std::make_unique<Runtime>(2, make_device("cuda"));
    gpu_kernels_ = make_kernels<Fp32Policy>(*gpu_);
    cpu_kernels_ = std::make_unique<CpuKernels<Fp32Policy>>(cpu_);
  }
  Device& device() { return gpu_->device(); }

  // A device copy of host values, kept alive by the fixture.
  template <class T>
  T* on_gpu(const std::vector<T>& host) {
    auto& buffer = buffers_.emplace_back();
    buffer.ensure(device(), host.size() * sizeof(T) + 1);
    device().copy_to_device(buffer.data(), host.data(), host.size() * sizeof(T));
    return reinterpret_cast<T*>(buffer.data());
  }
  template <class T>
  std::vector<T> to_host(const T* p, std::size_t n) {
    std::vector<T> host(n);
    device().copy_to_host(host.data(), p, n * sizeof(T));
    return host;
  }
  // Each of `rounded` is the bf16 rounding of the value beside it in `values`.
  static void expect_rounding_of(const std::vector<bf16>& rounded, const std::vector<float>& values,
                                 const char* what) {
    ASSERT_EQ(rounded.size(), values.size()) << what;
    for (std::size_t i = 0; i < values.size(); ++i)
      ASSERT_EQ(rounded[i].bits, to_bf16(values[i]).bits) << what << ", value " << i;
  }
  void expect_close(const std::vector<float>& gpu, const std::vector<float>& cpu, const char* what,
                    double tolerance = kFp32Op) {
    ASSERT_EQ(gpu.size(), cpu.size()) << what;
    EXPECT_LT(testing::max_rel_error(gpu, cpu), tolerance) << what;
  }

  Runtime cpu_{2};
  std::unique_ptr<Runtime> gpu_;
  std::unique_ptr<Kernels<Fp32Policy>> gpu_kernels_;
  std::unique_ptr<Kernels<Fp32Policy>> cpu_kernels_;
  std::vector<DeviceBuffer<std::byte>> buffers_;
};

}  // namespace zerolora::cuda_test
