// RMSNorm forward and backward on the device (ops/rmsnorm.hpp), one block per row:
//   dst = src * rstd * w, rstd = 1 / sqrt(mean(src^2) + eps)
//   dx (= or +=) rstd * (w * dy) - x * rstd^3 * sum_j(w_j dy_j x_j) / D
// IEEE division and square root (no fast math), as the CPU computes them.
// Where D is a multiple of 4, at most kThreads * 4 * kMaxQuads, and every pointer aligned for
// it, each thread loads its share of the row as 16-byte quads, all at once, and keeps them in
// registers for the second pass (the row read once). One column a thread, the row read twice,
// ran RMSNorm at 0.68 of a copy's bandwidth on an H100 (bench_kernels, 2026-12-06). Each
// element's source expression is the same on both paths; the sums' order differs (fixed on
// each).
#include <initializer_list>
#include <type_traits>

#include "cuda/device_math.cuh"

namespace zerolora::cuda {
namespace {

// Threads per block, every kernel here launched with exactly this many (launch_rows): the quads
// kernels stride a row by kThreads, not blockDim.x (their unrolled loads then sit at fixed
// offsets from one address), so a launch with fewer threads would leave columns unwritten.
constexpr int kThreads = 256;
constexpr int kMaxQuads = 16;  // quads a thread keeps: rows up to 16384 values

__device__ __forceinline__ Float4 weight_quad(const float* w, int c) {
  return group<const Float4>(w, c);
}
__device__ __forceinline__ Float4 weight_quad(const Bf16Bits* w, int c) {
  const Bf16x4 b = group<const Bf16x4>(w, c);
  Float4 f;
  ZL_UNROLL for (int l = 0; l < 4; ++l) f.v[l] = bf16_to_float(b.v[l]);
  return f;
}

// The row's quads this thread takes, c = threadIdx.x + g kThreads for g < G (zero past the
// row's end, which adds nothing to a sum), loaded before any is used.
template <int G>
__device__ __forceinline__ void load_quads(Float4 (&v)[G], const float* row, int quads) {
  ZL_UNROLL for (int g = 0; g < G; ++g) {
    const int c = static_cast<int>(threadIdx.x) + g * kThreads;
    v[g] = c < quads ? group<const Float4>(row, c) : Float4{};
  }
}

template <int G, class W>
__global__ void __launch_bounds__(kThreads)
    rmsnorm_forward_quads_kernel(float* dst, float* rstd, const float* src, const W* weight,
                                 Index M, Index D, float eps, Bf16Bits* rounded) {
  __shared__ float shared[32];  // block_sum's scratch
  const int quads = static_cast<int>(D / 4);
  for (Index row = blockIdx.x; row < M; row += gridDim.x) {
    Float4 x[G];
    load_quads(x, src + row * D, quads);
    float sum = 0.0f;
    ZL_UNROLL for (int g = 0; g < G; ++g) {
      ZL_UNROLL for (int l = 0; l < 4; ++l) sum += x[g].v[l] * x[g].v[l];
    }
    sum = block_sum(sum, shared);
    const float r = 1.0f / sqrtf(sum / static_cast<float>(D) + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    ZL_UNROLL for (int g = 0; g < G; ++g) {
      const int c = static_cast<int>(threadIdx.x) + g * kThreads;
      if (c >= quads) break;
      const Float4 w = weight_quad(weight, c);
      Float4 y;
      Bf16x4 y16;
      ZL_UNROLL for (int l = 0; l < 4; ++l) {
        y.v[l] = x[g].v[l] * r * w.v[l];
        y16.v[l] = float_to_bf16(y.v[l]);
      }
      group<Float4>(dst + row * D, c) = y;
      if (rounded) group<Bf16x4>(rounded + row * D, c) = y16;
    }
  }
}

template <int G, class W>
__global__ void __launch_bounds__(kThreads)
    rmsnorm_backward_quads_kernel(float* diff_src, const float* diff_dst, const float* src,
                                  const float* rstd, const W* weight, Index M, Index D,
                                  bool accumulate) {
  __shared__ float shared[32];  // block_sum's scratch
  const int quads = static_cast<int>(D / 4);
  for (Index row = blockIdx.x; row < M; row += gridDim.x) {
    Float4 x[G], dy[G];
    load_quads(x, src + row * D, quads);
    load_quads(dy, diff_dst + row * D, quads);
    const float r = rstd[row];
    float dot = 0.0f;
    ZL_UNROLL for (int g = 0; g < G; ++g) {
      const int c = static_cast<int>(threadIdx.x) + g * kThreads;
      if (c >= quads) break;
      const Float4 w = weight_quad(weight, c);
      ZL_UNROLL for (int l = 0; l < 4; ++l) dot += w.v[l] * dy[g].v[l] * x[g].v[l];
    }
    dot = block_sum(dot, shared);
    const float coef = dot * r * r * r / static_cast<float>(D);
    float* dx = diff_src + row * D;
    ZL_UNROLL for (int g = 0; g < G; ++g) {
      const int c = static_cast<int>(threadIdx.x) + g * kThreads;
      if (c >= quads) break;
      const Float4 w = weight_quad(weight, c);
      Float4 out = accumulate ? group<const Float4>(dx, c) : Float4{};
      ZL_UNROLL for (int l = 0; l < 4; ++l) {
        const float v = r * w.v[l] * dy[g].v[l] - x[g].v[l] * coef;
        out.v[l] = accumulate ? out.v[l] + v : v;
      }
      group<Float4>(dx, c) = out;
    }
  }
}

template <class W>
__global__ void rmsnorm_forward_kernel(float* dst, float* rstd, const float* src, const W* weight,
                                       Index M, Index D, float eps, Bf16Bits* rounded) {
  __shared__ float shared[32];  // block_sum's scratch
  for (Index row = blockIdx.x; row < M; row += gridDim.x) {
    const float* x = src + row * D;
    float sum = 0.0f;
    for (Index j = threadIdx.x; j < D; j += blockDim.x) sum += x[j] * x[j];
    sum = block_sum(sum, shared);
    const float r = 1.0f / sqrtf(sum / static_cast<float>(D) + eps);
    if (threadIdx.x == 0) rstd[row] = r;
    float* y = dst + row * D;
    for (Index j = threadIdx.x; j < D; j += blockDim.x) {
      const float v = x[j] * r * load_weight(weight, j);
      y[j] = v;
      if (rounded) rounded[row * D + j] = float_to_bf16(v);
    }
  }
}

template <class W>
__global__ void rmsnorm_backward_kernel(float* diff_src, const float* diff_dst, const float* src,
                                        const float* rstd, const W* weight, Index M, Index D,
                                        bool accumulate) {
  __shared__ float shared[32];  // block_sum's scratch
  for (Index row = blockIdx.x; row < M; row += gridDim.x) {
    const float* x = src + row * D;
    const float* dy = diff_dst + row * D;
    float* dx = diff_src + row * D;
    const float r = rstd[row];
    float dot = 0.0f;
    for (Index j = threadIdx.x; j < D; j += blockDim.x)
      dot += load_weight(weight, j) * dy[j] * x[j];
    dot = block_sum(dot, shared);
    const float coef = dot * r * r * r / static_cast<float>(D);
    for (Index j = threadIdx.x; j < D; j += blockDim.x) {
      const float v = r * load_weight(weight, j) * dy[j] - x[j] * coef;
      dx[j] = accumulate ? dx[j] + v : v;
    }
  }
}

// An op's two kernels: the one-column one and, for G quads a thread, the quads one.
template <class W>
struct ForwardKernels {
  static constexpr auto one_column = &rmsnorm_forward_kernel<W>;
  template <int G>  // (a function: nvcc warns of a variable template member as undefined)
  static constexpr auto quads() {
    return &rmsnorm_forward_quads_kernel<G, W>;
  }
};
template <class W>
struct BackwardKernels {
  static constexpr auto one_column = &rmsnorm_backward_kernel<W>;
  template <int G>  // (a function: nvcc warns of a variable template member as undefined)
  static constexpr auto quads() {
    return &rmsnorm_backward_quads_kernel<G, W>;
  }
};

// One block of kThreads per row: Kernels' quads kernel for g quads a thread (1, 2, 4, 8 or
// 16), or its one-column kernel where g is 0.
template <class Kernels, class... Args>
void launch_rows(cudaStream_t s, Index M, int g, const Args&... args) {
  const auto launch = [&](auto per_thread) {
    static constexpr auto kernel = Kernels::template quads<decltype(per_thread)::value>();
    ZL_LAUNCH(kernel, grid_for(M, 1), kThreads, s)(args...);
  };
  switch (g) {
    case 0: {
      static constexpr auto kernel = Kernels::one_column;
      ZL_LAUNCH(kernel, grid_for(M, 1), kThreads, s)(args...);
      return;
    }
    case 1:
      return launch(std::integral_constant<int, 1>{});
    case 2:
      return launch(std::integral_constant<int, 2>{});
    case 4:
      return launch(std::integral_constant<int, 4>{});
    case 8:
      return launch(std::integral_constant<int, 8>{});
    case kMaxQuads:
      return launch(std::integral_constant<int, kMaxQuads>{});
    default:
      refuse_launch("rmsnorm", "quads per thread other than 0, 1, 2, 4, 8 or 16");
  }
}

// The weight where its type is T (the float pointers' list or the bf16 ones'), else null.
template <class T, class W>
const void* if_type(const W* w) {
  if constexpr (std::is_same_v<T, W>) {
    return w;
  } else {
    return nullptr;
  }
}

}  // namespace

int rmsnorm_quads_per_thread(Index D, std::initializer_list<const void*> floats,
                             std::initializer_list<const void*> bf16s) {
  if (D > Index{kThreads} * 4 * kMaxQuads || !quads_aligned(D, floats, bf16s)) return 0;
  int g = 1;
  while (Index{kThreads} * 4 * g < D) g *= 2;
  return g;
}

template <class W>
void rmsnorm_forward(cudaStream_t s, float* dst, float* rstd, const float* src, const W* weight,
                     Index M, Index D, float eps, Bf16Bits* rounded) {
  if (M == 0) return;
  launch_rows<ForwardKernels<W>>(s, M,
                                 rmsnorm_quads_per_thread(D, {dst, src, if_type<float>(weight)},
                                                          {rounded, if_type<Bf16Bits>(weight)}),
                                 dst, rstd, src, weight, M, D, eps, rounded);
  check_launch("rmsnorm_forward", M, D);
}

template <class W>
void rmsnorm_backward(cudaStream_t s, float* diff_src, const float* diff_dst, const float* src,
                      const float* rstd, const W* weight, Index M, Index D, bool accumulate) {
  if (M == 0) return;
  launch_rows<BackwardKernels<W>>(
      s, M,
      rmsnorm_quads_per_thread(D, {diff_src, diff_dst, src, if_type<float>(weight)},
                               {if_type<Bf16Bits>(weight)}),
      diff_src, diff_dst, src, rstd, weight, M, D, accumulate);
  check_launch("rmsnorm_backward", M, D);
}

template void rmsnorm_forward<float>(cudaStream_t, float*, float*, const float*, const float*,
                                     Index, Index, float, Bf16Bits*);
template void rmsnorm_forward<Bf16Bits>(cudaStream_t, float*, float*, const float*, const Bf16Bits*,
                                        Index, Index, float, Bf16Bits*);
template void rmsnorm_backward<float>(cudaStream_t, float*, const float*, const float*,
                                      const float*, const float*, Index, Index, bool);
template void rmsnorm_backward<Bf16Bits>(cudaStream_t, float*, const float*, const float*,
                                         const float*, const Bf16Bits*, Index, Index, bool);

}  // namespace zerolora::cuda
