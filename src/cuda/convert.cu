// Element conversions (ops/convert.hpp), the finite scan (core/finite.hpp) and row gathers on
// the device. bf16 rounding is core/bf16.hpp's, bit for bit.
#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

// The conversions as launch_elementwise's ops: four values per 16-byte load where aligned.
struct ToBf16 {
  Bf16Bits* dst;
  const float* src;
  __device__ void one(Index i) const { dst[i] = float_to_bf16(src[i]); }
  __device__ void quad(Index q) const {
    const Float4 v = group<const Float4>(src, q);
    Bf16x4 out;
    ZL_UNROLL for (int k = 0; k < 4; ++k) out.v[k] = float_to_bf16(v.v[k]);
    group<Bf16x4>(dst, q) = out;
  }
};

struct RoundToBf16 {
  float* x;
  Bf16Bits* copy;  // may be null
  __device__ void one(Index i) const {
    const Bf16Bits b = float_to_bf16(x[i]);
    x[i] = bf16_to_float(b);
    if (copy) copy[i] = b;
  }
  __device__ void quad(Index q) const {
    Float4 v = group<const Float4>(x, q);
    Bf16x4 b;
    ZL_UNROLL for (int k = 0; k < 4; ++k) {
      b.v[k] = float_to_bf16(v.v[k]);
      v.v[k] = bf16_to_float(b.v[k]);
    }
    group<Float4>(x, q) = v;
    if (copy) group<Bf16x4>(copy, q) = b;
  }
};

struct WidenBf16 {
  float* dst;
  const Bf16Bits* src;
  Bf16Bits* copy;  // may be null
  __device__ void one(Index i) const {
    dst[i] = bf16_to_float(src[i]);
    if (copy) copy[i] = src[i];
  }
  __device__ void quad(Index q) const {
    const Bf16x4 b = group<const Bf16x4>(src, q);
    Float4 v;
    ZL_UNROLL for (int k = 0; k < 4; ++k) v.v[k] = bf16_to_float(b.v[k]);
    group<Float4>(dst, q) = v;
    if (copy) group<Bf16x4>(copy, q) = b;
  }
};

__global__ void widen_bf16_columns_kernel(float* dst, Index dst_ld, const Bf16Bits* src, Index rows,
                                          Index cols) {
  ZL_ROWS_COLS(i, j, rows, cols) dst[i * dst_ld + j] = bf16_to_float(src[i * cols + j]);
}
// Four columns per thread (cols and dst_ld multiples of 4, the pointers aligned): cuDNN's dQ, dK
// and dV widened into q/k/v's columns, where 2-byte loads left the scalar kernel well below a
// copy's bandwidth.
__global__ void widen_bf16_column_quads_kernel(float* dst, Index dst_ld, const Bf16Bits* src,
                                               Index rows, Index quads) {
  ZL_ROWS_COLS(i, q, rows, quads) {
    const Bf16x4 b = group<const Bf16x4>(src + i * 4 * quads, q);
    Float4 v;
    ZL_UNROLL for (int k = 0; k < 4; ++k) v.v[k] = bf16_to_float(b.v[k]);
    group<Float4>(dst + i * dst_ld, q) = v;
  }
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
  ZL_ROWS_COLS(r, j, n, D) dst[r * D + j] = src[static_cast<Index>(rows[r]) * D + j];
}

__global__ void scatter_rows_kernel(float* dst, const float* src, const std::int32_t* rows, Index n,
                                    Index D) {
  ZL_ROWS_COLS(r, j, n, D) dst[static_cast<Index>(rows[r]) * D + j] = src[r * D + j];
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
  launch_elementwise(s, ToBf16{dst, src}, n, aligned_to(src, 16) && aligned_to(dst, 8));
  check_launch("to_bf16", n, 1);
}

void round_to_bf16(cudaStream_t s, float* x, Bf16Bits* copy, Index n) {
  if (n == 0) return;
  launch_elementwise(s, RoundToBf16{x, copy}, n, aligned_to(x, 16) && aligned_to(copy, 8));
  check_launch("round_to_bf16", n, 1);
}

void widen_bf16(cudaStream_t s, float* dst, const Bf16Bits* src, Index n, Bf16Bits* copy) {
  if (n == 0) return;
  launch_elementwise(s, WidenBf16{dst, src, copy}, n,
                     aligned_to(dst, 16) && aligned_to(src, 8) && aligned_to(copy, 8));
  check_launch("widen_bf16", n, 1);
}

void widen_bf16_columns(cudaStream_t s, float* dst, Index dst_ld, const Bf16Bits* src, Index rows,
                        Index cols) {
  if (rows == 0 || cols == 0) return;
  if (dst_ld % 4 == 0 && quads_aligned(cols, {dst}, {src})) {
    ZL_LAUNCH(widen_bf16_column_quads_kernel, grid_rows_cols(rows, cols / 4, 256), 256, s)
    (dst, dst_ld, src, rows, cols / 4);
  } else {
    ZL_LAUNCH(widen_bf16_columns_kernel, grid_rows_cols(rows, cols, 256), 256, s)
    (dst, dst_ld, src, rows, cols);
  }
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
  ZL_LAUNCH(gather_rows_kernel, grid_rows_cols(n, D, 256), 256, s)(dst, src, rows, n, D);
  check_launch("gather_rows", n, D);
}

void scatter_rows(cudaStream_t s, float* dst, const float* src, const std::int32_t* rows, Index n,
                  Index D) {
  if (n == 0) return;
  ZL_LAUNCH(scatter_rows_kernel, grid_rows_cols(n, D, 256), 256, s)(dst, src, rows, n, D);
  check_launch("scatter_rows", n, D);
}

}  // namespace zerolora::cuda
