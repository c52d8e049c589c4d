#include "train/adamw.hpp"

#include <cmath>

#include "core/cpu_dispatch.hpp"
#include "core/error.hpp"

namespace zerolora {

template <class T>
AdamW<T>::AdamW(Index size, AdamWConfig config)
    : config_(config), m_(static_cast<std::size_t>(size)), v_(static_cast<std::size_t>(size)) {
  m_.zero();
  v_.zero();
}

template <class T>
ZL_CPU_CLONES void AdamW<T>::step(Runtime& rt, std::span<T> params, std::span<const T> grads,
                                  double lr) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kOptimizer);
  ZL_CHECK(params.size() == m_.size() && grads.size() == m_.size());
  ++steps_;
  const double b1 = config_.beta1, b2 = config_.beta2;
  const double bias_correction1 = 1.0 - std::pow(b1, static_cast<double>(steps_));
  const double bias_correction2 = 1.0 - std::pow(b2, static_cast<double>(steps_));
  const T step_size = static_cast<T>(lr / bias_correction1);
  const T bc2_sqrt = static_cast<T>(std::sqrt(bias_correction2));
  const T decay = static_cast<T>(1.0 - lr * config_.weight_decay);
  const T eps = static_cast<T>(config_.eps);
  const T one_minus_b1 = static_cast<T>(1.0 - b1), beta2 = static_cast<T>(b2);
  const T one_minus_b2 = static_cast<T>(1.0 - b2);
  T* p = params.data();
  T* m = m_.data();
  T* v = v_.data();
  const T* g = grads.data();
  const Index n = static_cast<Index>(params.size());
#pragma omp parallel for simd num_threads(rt.threads()) schedule(static) if (n > 65536)
  for (Index i = 0; i < n; ++i) {
    p[i] *= decay;
    m[i] += (g[i] - m[i]) * one_minus_b1;  // torch: exp_avg.lerp_(grad, 1 - beta1)
    v[i] = v[i] * beta2 + one_minus_b2 * g[i] * g[i];
    const T denom = std::sqrt(v[i]) / bc2_sqrt + eps;
    p[i] -= step_size * m[i] / denom;
  }
}

template <class T>
double grad_norm(Runtime& rt, std::span<const T> grads) {
  double sum = 0;
  const T* g = grads.data();
  const Index n = static_cast<Index>(grads.size());
#pragma omp parallel for num_threads(rt.threads()) schedule(static) reduction(+ : sum) if (n > 65536)
  for (Index i = 0; i < n; ++i) sum += static_cast<double>(g[i]) * static_cast<double>(g[i]);
  return std::sqrt(sum);
}

double clip_coefficient(double norm, double max_norm) {
  return max_norm > 0 ? std::min(1.0, max_norm / (norm + 1e-6)) : 1.0;
}

template <class T>
double clip_grad_norm(Runtime& rt, std::span<T> grads, double max_norm) {
  ProfileScope profile(rt.profiler(), ProfileCategory::kOptimizer);
  const double norm = grad_norm<T>(rt, std::span<const T>(grads.data(), grads.size()));
  if (max_norm <= 0) return norm;
  const T c = static_cast<T>(clip_coefficient(norm, max_norm));
  for (T& g : grads) g *= c;  // torch multiplies even when coef == 1
  return norm;
}

template class AdamW<float>;
template class AdamW<double>;
template double grad_norm<float>(Runtime&, std::span<const float>);
template double grad_norm<double>(Runtime&, std::span<const double>);
template double clip_grad_norm<float>(Runtime&, std::span<float>, double);
template double clip_grad_norm<double>(Runtime&, std::span<double>, double);

}  // namespace zerolora
