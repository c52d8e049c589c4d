// The LoRA branch of the kernel interface (ops/kernels.hpp, ops/lora_branch.hpp) on a CUDA GPU,
// for CudaKernels (cuda_kernels.cpp), which owns one and times its calls: up to
// kLoraFusedMaxRank over views with contiguous rows, lora.cu's fused kernels (each activation
// read once, the dropout mask made on the fly; the backward of branches that share their input
// as one group); else cuBLASLt GEMMs in fp32 and dropped copies of the input. Both policies
// compute the branch in fp32, so this is not a template.
#pragma once

#include <initializer_list>
#include <span>

#include "core/device.hpp"
#include "cuda/cuda_device.hpp"
#include "cuda/cuda_ops.hpp"
#include "cuda/gemm.hpp"
#include "ops/kernels.hpp"

namespace zerolora::cuda {

class CudaLora {
 public:
  using BackwardBranch = LoraBackwardBranch<float>;

  // gemm runs on the device's stream and outlives this.
  CudaLora(CudaDevice& device, LtGemm& gemm);

  // Kernels' lora_project, lora_forward, lora_expand, lora_backward.
  void project(float* z, Mat<const float> src, const float* a, Index rank,
               const DropoutMask& dropout);
  void forward(Mat<float> dst, float* z, Mat<const float> src, const float* a, const float* b,
               Index rank, double scale, const DropoutMask& dropout);
  void expand(Mat<float> dst, const float* z, const float* b, Index rank, double scale);
  void backward(Mat<float> diff_src, float* diff_a, float* diff_b, Mat<const float> diff_dst,
                const float* z, Mat<const float> src, const float* a, const float* b, Index rank,
                double scale, const DropoutMask& dropout);

  // Kernels' lora_backward_shared as one group of lora.cu's kernels (src read once for their
  // dA, diff_src read and written once for their terms), for branches that groups_backward
  // accepts; the caller runs others one by one. (backward's fused path is backward_group with
  // one branch.) Their forward runs one by one: see CudaKernels::lora_backward_shared.
  static bool groups_backward(Mat<float> diff_src, std::span<const BackwardBranch> branches,
                              Mat<const float> src, Index rank);
  void backward_group(Mat<float> diff_src, std::span<const BackwardBranch> branches,
                      Mat<const float> src, Index rank, double scale);

 private:
  Mat<const float> dropped(Mat<const float> src, const DropoutMask& dropout);
  template <class Branch>
  static bool groups(Index rank, std::span<const Branch> branches,
                     std::initializer_list<Index> column_strides);

  CudaDevice& device_;
  LtGemm& gemm_;
  cudaStream_t s_;
  DeviceBuffer<float> dz_, partial_, work_, dropout_work_;
};

}  // namespace zerolora::cuda
