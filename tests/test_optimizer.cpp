// AdamW and gradient clipping, with hyper-parameters chosen so the first steps are exact in
// binary floating point, then several steps against an independent double implementation;
// the trainer's clipping by the global norm.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "comm/communicator.hpp"
#include "core/precision.hpp"
#include "model/llama_model.hpp"
#include "model/llama_weights.hpp"
#include "test_util.hpp"
#include "train/adamw.hpp"
#include "train/lora_trainer.hpp"

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

// The trainer clips with the global norm, only ever down: below the threshold the gradient
// AdamW sees is the model's own, above it the model's scaled by max / norm (every fixture and
// MPI test clips at every step, so this is the one place a gradient under the threshold is
// checked).
TEST(LoraTrainer, ClipsOnlyAboveTheThreshold) {
  Runtime rt(1);
  LlamaConfig config;
  config.hidden_size = 16;
  config.intermediate_size = 24;
  config.num_layers = 2;
  config.num_heads = 2;
  config.num_kv_heads = 1;
  config.head_dim = 8;
  config.vocab_size = 32;
  auto weights = random_llama_weights<float>(rt, config, 7, 0.2);
  LoraConfig lora;
  lora.rank = 2;
  lora.alpha = 4;
  lora.dropout = 0.0;
  lora.targets = parse_lora_targets("q_proj,v_proj");
  const LoraLayout layout(config, lora);
  const std::vector<float> init = testing::lora_params_with_nonzero_b(layout, 3, 0.01f);
  LlamaModel<Fp32Policy> model(rt, weights, &layout);
  std::vector<TokenSequence> data(2);
  data[0] = {{1, 5, 9, 3, 7}, {1, 5, 9, 3, 7}, {5}};
  data[1] = {{2, 4, 6, 8}, {kIgnoreIndex, 4, 6, 8}, {4}};
  const std::vector<Index> all{0, 1};
  const Index targets = count_targets(data, all);
  // The model's own gradient of the mean loss, and its norm.
  std::vector<float> expected(init.size(), 0.0f);
  Batch batch;
  for (const auto& s : data) batch.add_sequence(s.input_ids, s.labels, 0);
  model.forward_backward(batch, init, expected, 1.0 / static_cast<double>(targets), {});
  double norm = 0;
  for (float g : expected) norm += static_cast<double>(g) * g;
  norm = std::sqrt(norm);
  ASSERT_GT(norm, 0);
  auto comm = make_local_communicator();
  for (const double max_norm : {4 * norm, norm / 4}) {
    TrainerOptions options;
    options.micro_batch = 1;
    options.max_grad_norm = max_norm;
    LoraTrainer<Fp32Policy> trainer(rt, *comm, model, layout, options, init);
    const StepStats stats = trainer.step(data, all, targets, 1e-3, 0);
    EXPECT_NEAR(stats.grad_norm, norm, 1e-5 * norm);
    const double scale = std::min(1.0, max_norm / (norm + 1e-6));
    std::vector<float> scaled(expected);
    for (float& g : scaled) g = static_cast<float>(g * scale);
    EXPECT_LT(testing::max_rel_error(trainer.gather_grads(), scaled), 1e-5) << "max " << max_norm;
  }
}

}  // namespace
}  // namespace zerolora
