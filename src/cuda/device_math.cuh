// Device helpers shared by the .cu files: bf16 conversion exactly as src/core/bf16.hpp, the
// counter-based hash of src/core/rng.hpp, block reductions in a fixed order (deterministic).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "cuda/cuda_ops.hpp"

namespace zerolora::cuda {

__device__ __forceinline__ float bf16_to_float(Bf16Bits b) {
  return __uint_as_float(static_cast<unsigned>(b) << 16);
}

// Round to nearest even; NaN keeps its sign and becomes quiet (core/bf16.hpp to_bf16).
__device__ __forceinline__ Bf16Bits float_to_bf16(float x) {
  unsigned u = __float_as_uint(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<Bf16Bits>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<Bf16Bits>(u >> 16);
}

__device__ __forceinline__ float round_bf16(float x) {
  return bf16_to_float(float_to_bf16(x));
}

__device__ __forceinline__ float load_weight(const float* w, Index i) {
  return w[i];
}
__device__ __forceinline__ float load_weight(const Bf16Bits* w, Index i) {
  return bf16_to_float(w[i]);
}

__device__ __forceinline__ std::uint64_t mix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__device__ __forceinline__ std::uint64_t hash_combine(std::uint64_t key, std::uint64_t part) {
  return mix64(key ^ (part + 0x632be59bd9b4e019ull + (key << 6) + (key >> 2)));
}

// LoRA dropout's mask (ops/lora_branch.hpp, DropoutMask): element (i, j) is kept iff
// (mix64(hash_combine(key, row_keys[i]) + j) >> 40) >= p 2^24, kept values scaled by
// 1 / (1 - p); p 0 (no row keys): every element kept as it is. The CPU's masks exactly.
struct DropoutDraw {
  std::uint64_t key;
  const std::uint64_t* row_keys;  // null: dropout off
  std::uint64_t threshold;
  float keep_scale;
  __device__ __forceinline__ std::uint64_t row(Index i) const {
    return row_keys ? hash_combine(key, row_keys[i]) : 0;
  }
  // Whether element (i, j) is kept, row_key being row(i) (every element when dropout is off).
  __device__ __forceinline__ bool keeps(std::uint64_t row_key, Index j) const {
    return !row_keys || (mix64(row_key + static_cast<std::uint64_t>(j)) >> 40) >= threshold;
  }
  // v as the mask leaves it, kept being keeps()'s answer for v's element: a kernel that applies
  // one element's mask to two values (lora.cu's backward: x for dA, a term of dx) draws it once.
  __device__ __forceinline__ float dropped(bool kept, float v) const {
    if (!row_keys) return v;
    return kept ? v * keep_scale : 0.0f;
  }
  // v dropped or scaled, row_key being row(i) of v's row i: keeps() and dropped() in one, written
  // out as before they were split, which ptxas (nvcc 13.0, sm_90) compiles to the registers its
  // callers had (lora.cu's contraction: 56 at rank bound 4, against 60 through the two).
  __device__ __forceinline__ float apply(std::uint64_t row_key, Index j, float v) const {
    if (!row_keys) return v;
    return (mix64(row_key + static_cast<std::uint64_t>(j)) >> 40) >= threshold ? v * keep_scale
                                                                               : 0.0f;
  }
};

inline DropoutDraw make_dropout_draw(double p, std::uint64_t key, const std::uint64_t* row_keys) {
  if (p <= 0.0) return DropoutDraw{0, nullptr, 0, 1.0f};
  return DropoutDraw{key, row_keys, static_cast<std::uint64_t>(p * 16777216.0),
                     static_cast<float>(1.0 / (1.0 - p))};
}

// Sum and max over the warp (all 32 lanes); every lane gets the result, the same bits.
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
// `shared` holds 32 floats. The order of additions is fixed: the same bits every run.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // shared may still be read by a previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  return warp_sum(lane < warps ? shared[lane] : 0.0f);
}

__device__ __forceinline__ float block_max(float v, float* shared) {
  v = warp_max(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  return warp_max(lane < warps ? shared[lane] : -INFINITY);
}

// Each thread's share of [0, n) in a grid-stride loop: ZL_GRID_STRIDE(i, n) { ... }.
#define ZL_GRID_STRIDE(i, n)                                                         \
  for (Index i = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<Index>(gridDim.x) * blockDim.x)

// Launches `kernel` on `stream`: ZL_LAUNCH(kernel, blocks, threads, stream)(arguments...).
// nvcc compiles it to kernel<<<blocks, threads, 0, stream>>>; the host compiler, which only
// builds these files for tests/cuda_emulator, to the emulator's launch on the CPU.
#if defined(__CUDACC__)
#define ZL_LAUNCH(kernel, blocks, threads, stream) kernel<<<(blocks), (threads), 0, (stream)>>>
#else
#define ZL_LAUNCH(kernel, blocks, threads, stream)                                            \
  [launch_stream = (stream), launch_blocks = (blocks),                                        \
   launch_threads = (threads)](auto&&... arguments) {                                         \
    zl_emu_kernel_launch(kernel, dim3(launch_blocks), dim3(launch_threads), 0, launch_stream, \
                         arguments...);                                                       \
  }
#endif

// `#pragma unroll` for nvcc (the loop's trip count is a constant: its array stays in registers);
// nothing for the host compiler of the emulator.
#if defined(__CUDACC__)
#define ZL_UNROLL _Pragma("unroll")
#else
#define ZL_UNROLL
#endif

// Attention's mask and scale, for training's kernels (attention.cu) and generation's
// (attention_cached.cu): the first key row i sees, its segment's first or the sliding window's
// (i - window, i]; the scores' 1 / sqrt(head size).
__device__ __forceinline__ Index first_key(Index i, Index segment_begin, Index window) {
  return window > 0 && i - window + 1 > segment_begin ? i - window + 1 : segment_begin;
}
inline float attention_scale(Index head_dim) {
  return static_cast<float>(1.0 / sqrt(static_cast<double>(head_dim)));
}

inline unsigned grid_for(Index n, int threads) {
  const Index blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 * 16 ? (blocks < 1 ? 1 : blocks) : 65535 * 16);
}

// Each thread's share of a rows x cols matrix, launched on grid_rows_cols's shape: rows over the
// grid's y, columns over x. ZL_ROWS_COLS(i, j, rows, cols) { ... }. Unlike ZL_GRID_STRIDE over
// rows * cols, no element pays for a 64-bit division to find its row and column (tens of
// instructions, which made the elementwise kernels compute-bound rather than memory-bound).
#define ZL_ROWS_COLS(i, j, rows, cols)                                                    \
  for (Index i = blockIdx.y; i < (rows); i += gridDim.y)                                  \
    for (Index j = blockIdx.x * static_cast<Index>(blockDim.x) + threadIdx.x; j < (cols); \
         j += static_cast<Index>(gridDim.x) * blockDim.x)

// Blocks enough to cover cols once (threads per block given), one row of blocks per row up to
// CUDA's 65535 (the loop takes the rest).
inline dim3 grid_rows_cols(Index rows, Index cols, int threads) {
  const Index x = (cols + threads - 1) / threads;
  return dim3(static_cast<unsigned>(x < 1 ? 1 : (x < 65535 ? x : 65535)),
              static_cast<unsigned>(rows < 1 ? 1 : (rows < 65535 ? rows : 65535)));
}

// L consecutive values of T, loaded and stored as one access where the pointers allow (L 4:
// 16 bytes of float, 8 of bf16).
template <class T, int L>
struct alignas(sizeof(T) * L) Lanes {
  T v[L];
};
template <int L>
using FloatLanes = Lanes<float, L>;
template <int L>
using Bf16Lanes = Lanes<Bf16Bits, L>;
using Float4 = FloatLanes<4>;
using Bf16x4 = Bf16Lanes<4>;

// Group c of the consecutive groups of V (a Lanes) that start at p: group<Float4>(row, c) is
// values 4c .. 4c + 3 of the row.
template <class V, class T>
__device__ __forceinline__ V& group(T* p, Index c) {
  static_assert(std::is_same_v<std::remove_const_t<T>, std::remove_extent_t<decltype(V::v)>>,
                "a group of the pointer's own type of values");
  return reinterpret_cast<V*>(p)[c];
}

inline bool aligned_to(const void* p, std::uintptr_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

// Whether rows of n values take quads (Float4, Bf16x4): n a multiple of 4, so that every row
// starts aligned like the first, and each pointer given aligned for its quads (floats 16 bytes,
// bf16s 8; a null one is not used).
inline bool quads_aligned(Index n, std::initializer_list<const void*> floats,
                          std::initializer_list<const void*> bf16s) {
  if (n % 4 != 0) return false;
  for (const void* p : floats)
    if (p && !aligned_to(p, 16)) return false;
  for (const void* p : bf16s)
    if (p && !aligned_to(p, 8)) return false;
  return true;
}

// An elementwise map over n values, four at a time where every pointer is aligned for it:
// op.quad(q) does values 4q .. 4q + 3, op.one(i) value i (the rest, or all of them).
template <class Op>
__global__ void elementwise_kernel(Op op, Index quads, Index n) {
  ZL_GRID_STRIDE(q, quads) op.quad(q);
  ZL_GRID_STRIDE(t, n - 4 * quads) op.one(4 * quads + t);
}

template <class Op>
void launch_elementwise(cudaStream_t s, const Op& op, Index n, bool vector_aligned) {
  const Index quads = vector_aligned ? n / 4 : 0;
  const Index work = quads > n - 4 * quads ? quads : n - 4 * quads;
  ZL_LAUNCH(elementwise_kernel<Op>, grid_for(work, 256), 256, s)(op, quads, n);
}

}  // namespace zerolora::cuda
