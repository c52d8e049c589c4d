#include "ops/rope.hpp"

#include <algorithm>
#include <cmath>

#include "core/cpu_dispatch.hpp"
#include "core/error.hpp"
#include "core/profiler.hpp"

namespace zerolora {

std::vector<float> rope_inverse_frequencies(const RopeParams& params, Index head_dim) {
  const Index half = head_dim / 2;
  std::vector<float> inv(static_cast<std::size_t>(half));
  for (Index j = 0; j < half; ++j) {
    // torch: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all in fp32
    const float exponent = static_cast<float>(2 * j) / static_cast<float>(head_dim);
    const float power = static_cast<float>(std::pow(params.theta, static_cast<double>(exponent)));
    inv[j] = 1.0f / power;
  }
  switch (params.type) {
    case RopeParams::Type::kDefault:
      break;
    case RopeParams::Type::kLinear:
      for (float& w : inv) w /= static_cast<float>(params.factor);
      break;
    case RopeParams::Type::kLlama3: {
      // transformers' _compute_llama3_parameters, in the same fp32 operation order.
      const float factor = static_cast<float>(params.factor);
      const double old_len = static_cast<double>(params.original_max_position_embeddings);
      const double low_wavelen = old_len / params.low_freq_factor;
      const double high_wavelen = old_len / params.high_freq_factor;
      for (float& w : inv) {
        const float wavelen = static_cast<float>(2.0 * M_PI) / w;
        const float scaled = wavelen > static_cast<float>(low_wavelen) ? w / factor : w;
        const float smooth =
            (static_cast<float>(old_len) / wavelen - static_cast<float>(params.low_freq_factor)) /
            static_cast<float>(params.high_freq_factor - params.low_freq_factor);
        const float smoothed = (1.0f - smooth) * scaled / factor + smooth * scaled;
        const bool medium = !(wavelen < static_cast<float>(high_wavelen)) &&
                            !(wavelen > static_cast<float>(low_wavelen));
        w = medium ? smoothed : scaled;
      }
      break;
    }
  }
  return inv;
}

RopeTable::RopeTable(const RopeParams& params, Index head_dim)
    : half_(head_dim / 2), inv_freq_(rope_inverse_frequencies(params, head_dim)) {
  ZL_CHECK(head_dim % 2 == 0);
}

void RopeTable::ensure(Index positions) {
  if (positions <= size_) return;
  // At least doubled: generation asks for one more position per token, and a device backend
  // uploads the table whenever it grows (cuda_kernels.cpp), so growing by one would upload it
  // once per token; doubling uploads it O(log T) times.
  positions = std::max(positions, 2 * size_);
  cos_.resize(static_cast<std::size_t>(positions * half_));
  sin_.resize(static_cast<std::size_t>(positions * half_));
  for (Index p = size_; p < positions; ++p) {
    for (Index j = 0; j < half_; ++j) {
      // torch: position.float() * inv_freq (fp32 product), then cos/sin of that fp32 angle
      const float angle = static_cast<float>(p) * inv_freq_[j];
      cos_[p * half_ + j] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin_[p * half_ + j] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
  size_ = positions;
}

template <class T>
ZL_CPU_CLONES void rope_rotate(Runtime& rt, T* x /*[M, row_stride]*/,
                               const std::int32_t* positions /*[M]*/, const RopeTable& table,
                               Index M, Index row_stride, Index heads, bool inverse) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kRope);
  const Index half = table.half();
  const T sign = static_cast<T>(inverse ? -1 : 1);
#pragma omp parallel for num_threads(rt.threads()) schedule(static)
  for (Index i = 0; i < M; ++i) {
    const float* c = table.cos(positions[i]);
    const float* s = table.sin(positions[i]);
    for (Index h = 0; h < heads; ++h) {
      T* x1 = x + i * row_stride + h * 2 * half;
      T* x2 = x1 + half;
#pragma omp simd
      for (Index j = 0; j < half; ++j) {
        const T a = x1[j], b = x2[j], sin_j = sign * static_cast<T>(s[j]);
        x1[j] = a * static_cast<T>(c[j]) - b * sin_j;
        x2[j] = b * static_cast<T>(c[j]) + a * sin_j;
      }
    }
  }
}

template void rope_rotate<float>(Runtime&, float*, const std::int32_t*, const RopeTable&, Index,
                                 Index, Index, bool);
template void rope_rotate<double>(Runtime&, double*, const std::int32_t*, const RopeTable&, Index,
                                  Index, Index, bool);

}  // namespace zerolora
