// A stand-in for cuDNN's fused attention (src/cuda/cudnn_attention.hpp) on the emulated GPU, so
// that the glue around it in cuda_kernels.cpp (the bf16 copies into cuDNN's padded buffers, the
// token-major statistics, the dense or fused gradient layouts widened back into the layer's
// columns) runs in CI against the CPU engine; cuDNN itself cannot (the emulator has no cuDNN).
//
// It honours cudnn_attention.hpp's contract and is stricter than cuDNN where the contract leaves
// things open, so that glue relying on more than the contract fails here:
//   - inputs: q/k/v [M, (H + 2 KV) hd], O and dO [M, H hd] bf16, the statistics [M, H] fp32,
//     each cudnn_padded_rows(M) rows (cuDNN may read past the last token): every padding row is
//     read, through the emulator's range-checked copies (which end where the buffer's
//     allocation does), and must be zero (a DeviceError otherwise);
//   - outputs: O, the statistics and the gradients are written for the first M rows, in the
//     backward's layout (fused_gradients(backward algorithm): q/k/v's fused columns, row stride
//     (H + 2 KV) hd; else dense dQ [M, H hd], dK and dV [M, KV hd] at the pointers given); the
//     output buffers' padding rows are written with NaN, which nothing may read; dense
//     gradient arrays that overlap are refused (cuDNN writes them in no fixed order).
// The arithmetic is the backend's reference kernel with bf16 operands (attention.cu), run on
// widened copies of the inputs; O, the statistics and the gradients are rounded as cuDNN's
// are: bf16 O and gradients, fp32 natural-log statistics.
// What it cannot test: cudnn_attention.cpp itself (the frontend's graphs, the calls split by
// segments and heads, the ragged offsets, the statistics' aligned scratch), cuDNN's rounding
// and sums, its limits and workspace.
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/bf16.hpp"
#include "core/error.hpp"
#include "cuda/attention_geometry.hpp"
#include "cuda/cuda_ops.hpp"
#include "cuda/cudnn_attention.hpp"

namespace zerolora::cuda {
namespace {

constexpr Bf16Bits kBf16NaN = 0x7fc0;

template <class T>
std::vector<T> download(Device& device, const T* src, Index count) {
  std::vector<T> host(static_cast<std::size_t>(count));
  device.copy_to_host(host.data(), src, host.size() * sizeof(T));
  return host;
}

// Every value of rows [M, rows) of a [rows, width] array is zero: cuDNN may read them.
template <class T>
void expect_zero_padding(const std::vector<T>& host, Index M, Index width, const char* what) {
  for (std::size_t i = static_cast<std::size_t>(M * width); i < host.size(); ++i) {
    if (host[i] != T{}) {
      throw DeviceError(std::string("cuDNN stand-in: ") + what + "'s padding row " +
                        std::to_string(static_cast<Index>(i) / width) + " (past the " +
                        std::to_string(M) + " tokens) is not zero");
    }
  }
}

std::vector<float> widened(const std::vector<Bf16Bits>& bits, Index count) {
  std::vector<float> values(static_cast<std::size_t>(count));
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = zerolora::to_float(bf16{bits[i]});
  return values;
}

// [rows, cols] -> [cols, rows]: the statistics between cuDNN's token-major layout and the
// reference kernel's head-major one.
std::vector<float> transposed(const std::vector<float>& x, Index rows, Index cols) {
  std::vector<float> t(static_cast<std::size_t>(rows * cols));
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c)
      t[static_cast<std::size_t>(c * rows + r)] = x[static_cast<std::size_t>(r * cols + c)];
  return t;
}

// A padded bf16 output [rows, width] on the host: columns [first, first + width) of `values`
// [M, ld] rounded, rows [M, rows) NaN.
std::vector<Bf16Bits> rounded_rows(const std::vector<float>& values, Index ld, Index first,
                                   Index width, Index M, Index rows) {
  std::vector<Bf16Bits> bits(static_cast<std::size_t>(rows * width), kBf16NaN);
  for (Index r = 0; r < M; ++r)
    for (Index c = 0; c < width; ++c)
      bits[static_cast<std::size_t>(r * width + c)] =
          zerolora::to_bf16(values[static_cast<std::size_t>(r * ld + first + c)]).bits;
  return bits;
}

void copy_to(Device& device, Bf16Bits* dst, const std::vector<Bf16Bits>& host) {
  device.copy_to_device(dst, host.data(), host.size() * sizeof(Bf16Bits));
}

}  // namespace

struct CudnnAttention::Impl {
  Impl(Device& device_, cudaStream_t stream_)
      : device(device_),
        stream(stream_),
        algorithm(cudnn_backward_from_environment()),
        dp_cap(cudnn_dp_workspace_cap_from_environment()) {}
  Device& device;
  cudaStream_t stream;
  CudnnBackward algorithm;
  double dp_cap;  // as the real one reads it, though the stand-in runs every pass in one call
  std::vector<std::string> refusals;  // none: the stand-in takes every supported shape
  SegmentsOnDevice segments_on_device;
  DeviceBuffer<float> qkv, out, lse, diff_out, diff_qkv, delta;

  AttentionGeometry geometry(const std::vector<Segment>& segments, Index M,
                             const AttentionShape& shape) {
    return segments_on_device.geometry(device, segments, M, shape);
  }

  // A padded bf16 input's first M rows widened (its padding checked zero).
  std::vector<float> input(const Bf16Bits* src, Index M, Index width, const char* what) {
    const auto bits = download(device, src, cudnn_padded_rows(M) * width);
    expect_zero_padding(bits, M, width, what);
    return widened(bits, M * width);
  }
};

CudnnAttention::CudnnAttention(Device& device, cudaStream_t stream)
    : impl_(std::make_unique<Impl>(device, stream)) {}

CudnnAttention::~CudnnAttention() = default;

bool CudnnAttention::available(const std::vector<Segment>&, Index, const AttentionShape& shape) {
  return cudnn_attention_supports(shape);
}

const std::vector<std::string>& CudnnAttention::refusals() const {
  return impl_->refusals;
}

CudnnBackward CudnnAttention::backward_algorithm() const {
  return impl_->algorithm;
}

double CudnnAttention::dp_workspace_cap() const {
  return impl_->dp_cap;
}

void CudnnAttention::forward(Bf16Bits* out, float* stats, const Bf16Bits* qkv,
                             const std::vector<Segment>& segments, Index M,
                             const AttentionShape& shape) {
  Impl& s = *impl_;
  const Index w_qkv = shape.qkv_stride(), w_out = shape.heads * shape.head_dim;
  const Index rows = cudnn_padded_rows(M);
  upload<float>(s.device, s.qkv, s.input(qkv, M, w_qkv, "q/k/v"));
  s.out.ensure(s.device, static_cast<std::size_t>(M * w_out));
  s.lse.ensure(s.device, static_cast<std::size_t>(M * shape.heads));
  attention_forward(s.stream, s.out.data(), s.lse.data(), s.qkv.data(),
                    s.geometry(segments, M, shape), true);
  copy_to(s.device, out,
          rounded_rows(download(s.device, s.out.data(), M * w_out), w_out, 0, w_out, M, rows));
  std::vector<float> token_major =
      transposed(download(s.device, s.lse.data(), shape.heads * M), shape.heads, M);
  token_major.resize(static_cast<std::size_t>(rows * shape.heads),
                     std::numeric_limits<float>::quiet_NaN());
  s.device.copy_to_device(stats, token_major.data(), token_major.size() * sizeof(float));
}

void CudnnAttention::backward(Bf16Bits* diff_q, Bf16Bits* diff_k, Bf16Bits* diff_v,
                              const Bf16Bits* diff_out, const Bf16Bits* qkv, const Bf16Bits* out,
                              const float* stats, const std::vector<Segment>& segments, Index M,
                              const AttentionShape& shape) {
  Impl& s = *impl_;
  const Index w_qkv = shape.qkv_stride(), w_out = shape.heads * shape.head_dim,
              w_kv = shape.kv_heads * shape.head_dim, rows = cudnn_padded_rows(M);
  upload<float>(s.device, s.qkv, s.input(qkv, M, w_qkv, "q/k/v"));
  upload<float>(s.device, s.out, s.input(out, M, w_out, "O"));
  upload<float>(s.device, s.diff_out, s.input(diff_out, M, w_out, "dO"));
  auto token_major = download(s.device, stats, rows * shape.heads);
  expect_zero_padding(token_major, M, shape.heads, "the statistics");
  token_major.resize(static_cast<std::size_t>(M * shape.heads));
  upload<float>(s.device, s.lse, transposed(token_major, M, shape.heads));
  s.diff_qkv.ensure(s.device, static_cast<std::size_t>(M * w_qkv));
  s.delta.ensure(s.device, static_cast<std::size_t>(M * shape.heads));
  attention_backward(s.stream, s.diff_qkv.data(), s.diff_out.data(), s.qkv.data(), s.out.data(),
                     s.lse.data(), s.delta.data(), s.geometry(segments, M, shape), true);
  const std::vector<float> grads = download(s.device, s.diff_qkv.data(), M * w_qkv);
  // Fused: the three at their columns of one [rows, (H + 2 KV) hd] buffer; dense: each its own
  // [rows, width] array where the caller points.
  if (fused_gradients(s.algorithm)) {
    ZL_CHECK(diff_k == diff_q + w_out && diff_v == diff_k + w_kv);
    copy_to(s.device, diff_q, rounded_rows(grads, w_qkv, 0, w_qkv, M, rows));
    return;
  }
  // cuDNN writes the three in no fixed order: arrays that overlap (packed without their padding
  // rows, say) would read back right or wrong by the order of the writes here.
  const std::uintptr_t begin[3] = {reinterpret_cast<std::uintptr_t>(diff_q),
                                   reinterpret_cast<std::uintptr_t>(diff_k),
                                   reinterpret_cast<std::uintptr_t>(diff_v)};
  const std::uintptr_t bytes[3] = {static_cast<std::uintptr_t>(rows * w_out) * sizeof(Bf16Bits),
                                   static_cast<std::uintptr_t>(rows * w_kv) * sizeof(Bf16Bits),
                                   static_cast<std::uintptr_t>(rows * w_kv) * sizeof(Bf16Bits)};
  for (int a = 0; a < 3; ++a)
    for (int b = a + 1; b < 3; ++b)
      if (begin[a] < begin[b] + bytes[b] && begin[b] < begin[a] + bytes[a])
        throw DeviceError("cuDNN stand-in: dense gradients " + std::to_string(a) + " and " +
                          std::to_string(b) + " (dQ, dK, dV) overlap within " +
                          std::to_string(rows) + " padded rows");
  copy_to(s.device, diff_q, rounded_rows(grads, w_qkv, 0, w_out, M, rows));
  copy_to(s.device, diff_k, rounded_rows(grads, w_qkv, w_out, w_kv, M, rows));
  copy_to(s.device, diff_v, rounded_rows(grads, w_qkv, w_out + w_kv, w_kv, M, rows));
}

bool cudnn_loadable(std::string* version_or_why) {
  if (version_or_why) *version_or_why = "the CUDA emulator's stand-in (tests/cuda_emulator)";
  return true;
}

bool cudnn_attention_supports(const AttentionShape& shape) {
  return cudnn_supports_head_dim(shape.head_dim);
}

}  // namespace zerolora::cuda
