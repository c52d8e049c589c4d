// Element conversions (ops/convert.hpp), the finite scan (core/finite.hpp) and row gathers on
// the device. bf16 rounding is core/bf16.hpp's, bit for bit.
#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

__global__ void to_bf16_kernel(Bf16Bits* dst, const float* src, Index n) {
  ZL_GRID_STRIDE(i, n) dst[i] = float_to_bf16(src[i]);
}

__global__ void round_to_bf16_kernel(float* x, Bf16Bits* copy, Index n) {
  ZL_GRID_STRIDE(i, n) {
    const Bf16Bits b = float_to_bf16(x[i]);
    x[i] = bf16_to_float(b);
    if (copy) copy[i] = b;
  }
}

__global__ void widen_bf16_kernel(float* dst, const Bf16Bits* src, Index n) {
  ZL_GRID_STRIDE(i, n) dst[i] = bf16_to_float(src[i]);
}

__global__ void widen_bf16_columns_kernel(float* dst, Index dst_ld, const Bf16Bits* src, Index rows,
                                          Index cols) {
  ZL_GRID_STRIDE(i, rows * cols) dst[i / cols * dst_ld + i % cols] = bf16_to_float(src[i]);
}

__device__ __forceinline__ bool finite_value(float v) {
  return (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u;
}
__device__ __forceinline__ bool finite_value(Bf16Bits v) {
  return (v & 0x7f80u) != 0x7f80u;
}

template <class T>
__global__ void first_nonfinite_kernel(const T* x, Index n, unsigned long long* first) {
  ZL_GRID_STRIDE(i, n) {
    if (!finite_value(x[i])) atomicMin(first, static_cast<unsigned long long>(i));
  }
}

__global__ void gather_rows_kernel(float* dst, const float* src, const std::int32_t* rows, Index n,
                                   Index D) {
  ZL_GRID_STRIDE(i, n * D) {
    const Index r = i / D, j = i % D;
    dst[i] = src[static_cast<Index>(rows[r]) * D + j];
  }
}

__global__ void scatter_rows_kernel(float* dst, const float* src, const std::int32_t* rows, Index n,
                                    Index D) {
  ZL_GRID_STRIDE(i, n * D) {
    const Index r = i / D, j = i % D;
    dst[static_cast<Index>(rows[r]) * D + j] = src[i];
  }
}

template <class T>
void scan(cudaStream_t s, const T* x, Index n, unsigned long long* first) {
  // "None found" is any value >= n (scan_result): all ones, set on the stream, so that no host
  // variable has to outlive an async copy (an error here is the last error check_launch reads).
  cudaMemsetAsync(first, 0xff, sizeof *first, s);
  if (n > 0) ZL_LAUNCH(first_nonfinite_kernel<T>, grid_for(n, 256), 256, s)(x, n, first);
  check_launch("first_nonfinite", n, 1);
}

}  // namespace

void to_bf16(cudaStream_t s, Bf16Bits* dst, const float* src, Index n) {
  if (n == 0) return;
  ZL_LAUNCH(to_bf16_kernel, grid_for(n, 256), 256, s)(dst, src, n);
  check_launch("to_bf16", n, 1);
}

void round_to_bf16(cudaStream_t s, float* x, Bf16Bits* copy, Index n) {
  if (n == 0) return;
  ZL_LAUNCH(round_to_bf16_kernel, grid_for(n, 256), 256, s)(x, copy, n);
  check_launch("round_to_bf16", n, 1);
}

void widen_bf16(cudaStream_t s, float* dst, const Bf16Bits* src, Index n) {
  if (n == 0) return;
  ZL_LAUNCH(widen_bf16_kernel, grid_for(n, 256), 256, s)(dst, src, n);
  check_launch("widen_bf16", n, 1);
}

void widen_bf16_columns(cudaStream_t s, float* dst, Index dst_ld, const Bf16Bits* src, Index rows,
                        Index cols) {
  if (rows == 0 || cols == 0) return;
  ZL_LAUNCH(widen_bf16_columns_kernel, grid_for(rows * cols, 256), 256, s)
  (dst, dst_ld, src, rows, cols);
  check_launch("widen_bf16_columns", rows, cols);
}

void first_nonfinite(cudaStream_t s, const float* x, Index n, unsigned long long* first) {
  scan(s, x, n, first);
}
void first_nonfinite(cudaStream_t s, const Bf16Bits* x, Index n, unsigned long long* first) {
  scan(s, x, n, first);
}

void gather_rows(cudaStream_t s, float* dst, const float* src, const std::int32_t* rows, Index n,
                 Index D) {
  if (n == 0) return;
  ZL_LAUNCH(gather_rows_kernel, grid_for(n * D, 256), 256, s)(dst, src, rows, n, D);
  check_launch("gather_rows", n, D);
}

void scatter_rows(cudaStream_t s, float* dst, const float* src, const std::int32_t* rows, Index n,
                  Index D) {
  if (n == 0) return;
  ZL_LAUNCH(scatter_rows_kernel, grid_for(n * D, 256), 256, s)(dst, src, rows, n, D);
  check_launch("scatter_rows", n, D);
}

}  // namespace zerolora::cuda
