// AdamW and gradient clipping, with hyper-parameters chosen so the first step is exact in
// binary floating point, then several steps against an independent double implementation.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "train/adamw.hpp"

namespace zerolora {
namespace {

TEST(AdamW, FirstStepsAreExact) {
  // beta1 = 0.5, beta2 = 0.9375 (1 - beta2 = 1/16), eps = 0, a constant gradient g = +-4:
  // step 1: m = 2, v = 1; bias-corrected m_hat = 2 / 0.5 = 4, v_hat = 1 / 0.0625 = 16, so the
  // update is lr * 4 / 4 = lr. Without the correction it would be lr * 2 / 1 = 2 lr: these
  // betas do not cancel it. Step 2: m = 3, v = 1.9375; m_hat = 3 / 0.75 = 4,
  // v_hat = 1.9375 / 0.12109375 = 16: lr again. Weight decay multiplies by (1 - lr * wd) first.
  // Every number here is exact in binary floating point.
  Runtime rt(1);
  AdamW<float> adam(3, AdamWConfig{0.5, 0.9375, 0.0, 0.5});
  std::vector<float> p{2.0f, -2.0f, 0.0f};
  const std::vector<float> g{4.0f, -4.0f, 4.0f};
  std::vector<float> grads = g;
  adam.step(rt, p, grads, 0.5);
  EXPECT_EQ(p, (std::vector<float>{1.0f, -1.0f, -0.5f}));
  EXPECT_EQ(adam.steps(), 1);
  grads = g;
  adam.step(rt, p, grads, 0.5);
  EXPECT_EQ(p, (std::vector<float>{0.25f, -0.25f, -0.875f}));
  EXPECT_EQ(adam.steps(), 2);
}

TEST(AdamW, MatchesIndependentDoubleImplementation) {
  Runtime rt(2);
  const AdamWConfig config{0.9, 0.999, 1e-8, 0.1};
  const std::size_t n = 200000;  // large enough for the parallel path
  std::vector<double> p(n), m(n, 0.0), v(n, 0.0);
  for (std::size_t i = 0; i < n; ++i) p[i] = std::sin(0.001 * i);
  std::vector<float> pf(p.begin(), p.end());
  AdamW<float> adam(static_cast<Index>(n), config);
  for (int t = 1; t <= 5; ++t) {
    std::vector<double> g(n);
    for (std::size_t i = 0; i < n; ++i) g[i] = std::cos(0.003 * i * t) * 1e-3;
    const double lr = 1e-2 / t;
    for (std::size_t i = 0; i < n; ++i) {  // torch.optim.AdamW, written out
      p[i] *= 1 - lr * config.weight_decay;
      m[i] = config.beta1 * m[i] + (1 - config.beta1) * g[i];
      v[i] = config.beta2 * v[i] + (1 - config.beta2) * g[i] * g[i];
      const double m_hat = m[i] / (1 - std::pow(config.beta1, t));
      const double v_hat = v[i] / (1 - std::pow(config.beta2, t));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + config.eps);
    }
    std::vector<float> gf(g.begin(), g.end());
    adam.step(rt, pf, gf, lr);
  }
  double worst = 0;
  for (std::size_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(pf[i] - p[i]));
  EXPECT_LT(worst, 1e-6);
}

TEST(ClipGradNorm, ScalesLikeTorch) {
  Runtime rt(1);
  std::vector<float> g{3.0f, 4.0f};
  EXPECT_DOUBLE_EQ(clip_grad_norm<float>(rt, g, 10.0), 5.0);
  EXPECT_EQ(g, (std::vector<float>{3.0f, 4.0f}));
  EXPECT_DOUBLE_EQ(clip_grad_norm<float>(rt, g, 1.0), 5.0);
  const double coef = 1.0 / (5.0 + 1e-6);
  EXPECT_FLOAT_EQ(g[0], static_cast<float>(3.0 * coef));
  EXPECT_FLOAT_EQ(g[1], static_cast<float>(4.0 * coef));
  std::vector<float> h{3.0f, 4.0f};
  EXPECT_DOUBLE_EQ(clip_grad_norm<float>(rt, h, 0.0), 5.0);  // disabled
  EXPECT_EQ(h, (std::vector<float>{3.0f, 4.0f}));
}

}  // namespace
}  // namespace zerolora
