// Every GEMM of the CUDA backend, through cuBLASLt: c = alpha a b (+ c), on the row-major
// strided views of ops/matrix.hpp (the contract of ops/matmul.hpp). cuBLASLt is column-major:
// a row-major C = A B is computed as the column-major C^T = B^T A^T, each operand described as
// the column-major matrix its view already is (a transposed view is a plain column-major one).
// Operands fp32 or bf16, accumulation and output fp32 (CUBLAS_COMPUTE_32F: never TF32).
// Descriptors and the chosen algorithm are cached per shape, strides, types and pointer
// alignment, so a step runs no heuristic after the first. One 32 MiB workspace (Hopper's size).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "core/bf16.hpp"
#include "core/device.hpp"
#include "ops/matrix.hpp"

namespace zerolora::cuda {

// What identifies one cached GEMM plan (host-only: the key logic is unit-tested on the CPU).
struct GemmKey {
  bool trans_a, trans_b;  // cuBLASLt's opA / opB
  std::int64_t m, n, k, lda, ldb, ldc;
  int in_type;                    // 0 fp32, 1 bf16
  int align_a, align_b, align_c;  // bytes, power of two <= 256
  bool accumulate;
  bool out_of_place = false;  // C (the addend) is not D: an algorithm that supports it
  auto tie() const {
    return std::tie(trans_a, trans_b, m, n, k, lda, ldb, ldc, in_type, align_a, align_b, align_c,
                    accumulate, out_of_place);
  }
  bool operator<(const GemmKey& other) const { return tie() < other.tie(); }
};

// The column-major problem for row-major c = a b: throws ShapeError for views neither row- nor
// column-major, or a c that is not row-major.
GemmKey gemm_key(const void* a, Index a_rows, Index a_cols, Index a_rs, Index a_cs, const void* b,
                 Index b_rows, Index b_cols, Index b_rs, Index b_cs, const void* c, Index c_rows,
                 Index c_cols, Index c_rs, Index c_cs, int in_type, std::size_t element_bytes,
                 bool accumulate);

// Whether cuBLASLt (libcublasLt.so.<major>) loads here: its version, or why not.
bool cublaslt_loadable(std::string* version_or_why);

// Largest power of two <= 256 that divides the address.
int pointer_alignment(const void* pointer);

class LtGemm {
 public:
  // Keeps the descriptions and algorithms of up to `max_plans` GEMM shapes.
  LtGemm(Device& device, cudaStream_t stream, std::size_t max_plans = 4096);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // c (=) alpha a b, or with `accumulate` c (=) alpha a b + addend, addend (in c's layout)
  // being c itself where null.
  void matmul(Mat<const float> a, Mat<const float> b, Mat<float> c, float alpha, bool accumulate,
              const float* addend = nullptr);
  void matmul(Mat<const bf16> a, Mat<const bf16> b, Mat<float> c, float alpha, bool accumulate,
              const float* addend = nullptr);
  std::size_t cached_plans() const { return plans_.size(); }

 private:
  struct Api;
  struct Plan;
  void run(GemmKey key, const void* a, const void* b, float* c, float alpha, const float* addend);
  void copy_into_d(const GemmKey& key, float* d, const float* addend);
  cudaStream_t stream_;
  std::size_t max_plans_;
  std::unique_ptr<Api> api_;  // cuBLASLt, loaded at run time
  void* handle_ = nullptr;    // cublasLtHandle_t
  DeviceBuffer<std::byte> workspace_;
  std::map<GemmKey, std::unique_ptr<Plan>> plans_;
};

}  // namespace zerolora::cuda
