// Finite-difference checks, in double precision, of every op's backward and of the whole
// model's LoRA gradients: d/dx sum(c * f(x)) by central differences vs the analytic backward.
#include <gtest/gtest.h>

#include <functional>
#include <random>
#include <vector>

#include "core/precision.hpp"
#include "core/rng.hpp"
#include "model/llama_model.hpp"
#include "model/llama_weights.hpp"
#include "ops/attention.hpp"
#include "ops/cross_entropy.hpp"
#include "ops/linear.hpp"
#include "ops/lora_branch.hpp"
#include "ops/rmsnorm.hpp"
#include "ops/rope.hpp"
#include "ops/swiglu.hpp"
#include "test_util.hpp"
#include "tolerances.hpp"

namespace zerolora {
namespace {

std::vector<double> random_vector(std::size_t n, std::uint32_t seed, double scale = 1.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

// Central difference of loss() with respect to each element of x.
std::vector<double> numeric_gradient(std::vector<double>& x, const std::function<double()>& loss) {
  constexpr double h = 1e-6;
  std::vector<double> grad(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double plus = loss();
    x[i] = saved - h;
    const double minus = loss();
    x[i] = saved;
    grad[i] = (plus - minus) / (2 * h);
  }
  return grad;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

TEST(GradCheck, RmsNorm) {
  Runtime rt(2);
  const Index M = 3, D = 7;
  auto x = random_vector(M * D, 1), w = random_vector(D, 2), c = random_vector(M * D, 3);
  std::vector<double> y(M * D), rstd(M);
  auto loss = [&] {
    rmsnorm_forward(rt, y.data(), rstd.data(), x.data(), w.data(), M, D, 1e-5);
    return dot(y, c);
  };
  const auto numeric = numeric_gradient(x, loss);
  loss();                              // rstd of the unperturbed x
  std::vector<double> dx(M * D, 0.5);  // backward must overwrite, not add, when accumulate=false
  rmsnorm_backward(rt, dx.data(), c.data(), x.data(), rstd.data(), w.data(), M, D, false);
  EXPECT_LT(testing::max_rel_error(dx, numeric), tolerance::kFiniteDifference);
  // accumulate=true adds onto what is there (the residual stream)
  std::vector<double> acc(M * D, 1.0);
  rmsnorm_backward(rt, acc.data(), c.data(), x.data(), rstd.data(), w.data(), M, D, true);
  for (Index i = 0; i < M * D; ++i) EXPECT_NEAR(acc[i], 1.0 + dx[i], 1e-12);
}

TEST(GradCheck, Rope) {
  Runtime rt(2);
  RopeParams params;
  params.type = RopeParams::Type::kLlama3;
  params.factor = 8;
  params.original_max_position_embeddings = 8;
  const Index M = 5, heads = 3, hd = 6, stride = heads * hd + 2;  // a row has spare columns
  RopeTable table(params, hd);
  table.ensure(40);
  const std::vector<std::int32_t> positions{0, 3, 7, 20, 39};
  auto x = random_vector(M * stride, 4), c = random_vector(M * stride, 5);
  auto loss = [&] {
    auto y = x;
    rope_forward(rt, y.data(), positions.data(), table, M, stride, heads);
    return dot(y, c);
  };
  auto dx = c;
  rope_backward(rt, dx.data(), positions.data(), table, M, stride, heads);
  EXPECT_LT(testing::max_rel_error(dx, numeric_gradient(x, loss)), tolerance::kFiniteDifference);
}

TEST(GradCheck, SwiGlu) {
  Runtime rt(2);
  const Index M = 4, I = 5;
  auto gu = random_vector(M * 2 * I, 6, 2.0), c = random_vector(M * I, 7);
  std::vector<double> y(M * I);
  auto loss = [&] {
    swiglu_forward(rt, y.data(), gu.data(), M, I);
    return dot(y, c);
  };
  std::vector<double> dgu(M * 2 * I);
  swiglu_backward(rt, dgu.data(), c.data(), gu.data(), M, I);
  EXPECT_LT(testing::max_rel_error(dgu, numeric_gradient(gu, loss)), tolerance::kFiniteDifference);
}

TEST(GradCheck, CrossEntropy) {
  Runtime rt(2);
  const Index R = 4, V = 9;
  auto logits = random_vector(R * V, 8, 3.0);
  const std::vector<std::int32_t> targets{2, kIgnoreIndex, 8, 0};
  const double scale = 1.0 / 3;
  auto loss = [&] {
    auto copy = logits;
    return scale * cross_entropy(rt, copy.data(), targets.data(), R, V, scale, false);
  };
  auto grad = logits;
  cross_entropy(rt, grad.data(), targets.data(), R, V, scale, true);
  EXPECT_LT(testing::max_rel_error(grad, numeric_gradient(logits, loss)),
            tolerance::kFiniteDifference);
  for (Index j = 0; j < V; ++j) EXPECT_EQ(grad[V + j], 0.0) << "ignored row must get zero gradient";
}

// Attention over two segments with GQA and several query tiles; the input is the fused qkv.
// Both kernels: tiled (oneDNN tiles in float; loops in double) and direct (small heads).
class AttentionGradCheck : public ::testing::TestWithParam<AttentionOptions::Kernel> {};

TEST_P(AttentionGradCheck, GqaSegments) {
  for (const Index window : {Index{0}, Index{2}}) {  // full causal, and a sliding window
    Runtime rt(2);
    AttentionShape shape{4, 2, 4};
    shape.window = window;
    const std::vector<Segment> segments{{0, 5}, {5, 3}, {8, 1}};
    const Index M = 9, W3 = shape.qkv_stride(), Qd = shape.heads * shape.head_dim;
    AttentionOptions options;
    options.block = 2;
    options.kernel = GetParam();
    AttentionWorkspace ws;
    auto qkv = random_vector(M * W3, 9), c = random_vector(M * Qd, 10);
    std::vector<double> out(M * Qd), lse(shape.heads * M);
    auto loss = [&] {
      attention_forward<double, double>(rt, out.data(), lse.data(), qkv.data(), segments, M, shape,
                                        options, ws);
      return dot(out, c);
    };
    loss();
    std::vector<double> dqkv(M * W3, 7.0);  // must be overwritten
    attention_backward<double, double>(rt, dqkv.data(), c.data(), qkv.data(), out.data(),
                                       lse.data(), segments, M, shape, options, ws);
    EXPECT_LT(testing::max_rel_error(dqkv, numeric_gradient(qkv, loss)),
              tolerance::kFiniteDifference)
        << "window " << window;
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, AttentionGradCheck,
                         ::testing::Values(AttentionOptions::Kernel::kTiled,
                                           AttentionOptions::Kernel::kDirect),
                         [](const auto& info) {
                           return info.param == AttentionOptions::Kernel::kTiled ? "tiled"
                                                                                 : "direct";
                         });

TEST(GradCheck, LinearBackwardData) {
  Runtime rt(2);
  const Index M = 3, in = 5, out = 4;
  auto x = random_vector(M * in, 11), w = random_vector(out * in, 12),
       c = random_vector(M * out, 13);
  Buffer<double> operand;
  const double* no_rounding = nullptr;  // fp64: the operands are the values themselves
  std::vector<double> y(M * out);
  auto loss = [&] {
    linear_forward(rt, Mat<double>::dense(y.data(), M, out), x.data(), no_rounding, w.data(), in,
                   false, operand);
    return dot(y, c);
  };
  std::vector<double> dx(M * in);
  linear_backward_data(rt, dx.data(), c.data(), no_rounding, w.data(), M, out, in, operand);
  EXPECT_LT(testing::max_rel_error(dx, numeric_gradient(x, loss)), tolerance::kFiniteDifference);
}

// Ranks up to 16 run the fused branch (mask made on the fly, column blocks for the reductions
// over rows, threads when large enough); larger ranks the oneDNN / loop matmuls.
struct LoraShape {
  Index M, in, out, r;
};
class LoraBranchGradCheck : public ::testing::TestWithParam<LoraShape> {};

TEST_P(LoraBranchGradCheck, WithDropoutMatchesAPlainSumFiniteDifferencesAndOneThread) {
  const auto [M, in, out, r] = GetParam();
  Runtime rt(2);
  auto x = random_vector(M * in, 14), a = random_vector(r * in, 15), b = random_vector(out * r, 16);
  auto c = random_vector(M * out, 17);
  std::vector<std::uint64_t> row_keys(M);
  for (Index i = 0; i < M; ++i) row_keys[i] = mix64(i);
  DropoutMask mask{0.3, 99, row_keys.data()};
  const double scale = 1.7;
  Buffer<double> scratch;
  std::vector<double> z(M * r);
  auto forward = [&](Runtime& runtime) {
    std::vector<double> y(M * out, 0.5);
    lora_forward<double>(runtime, Mat<double>::dense(y.data(), M, out), z.data(),
                         Mat<const double>::dense(x.data(), M, in), a.data(), b.data(), r, scale,
                         mask, scratch);
    return y;
  };
  auto loss = [&] { return dot(forward(rt), c); };
  // The forward: y = 0.5 + scale drop(x) A^T B^T, summed plainly.
  std::vector<double> dropped(M * in);
  apply_dropout(rt, Mat<double>::dense(dropped.data(), M, in),
                Mat<const double>::dense(x.data(), M, in), mask, false);
  std::vector<double> expected(M * out, 0.5);
  for (Index i = 0; i < M; ++i)
    for (Index o = 0; o < out; ++o)
      for (Index k = 0; k < r; ++k) {
        double zik = 0;
        for (Index j = 0; j < in; ++j) zik += dropped[i * in + j] * a[k * in + j];
        expected[i * out + o] += scale * zik * b[o * r + k];
      }
  EXPECT_LT(testing::max_rel_error(forward(rt), expected), 1e-13);
  // The backward, by finite differences; and the same bits on one thread as on two.
  forward(rt);
  auto backward = [&](Runtime& runtime) {
    std::vector<double> grads(M * in + r * in + out * r, 0.0);
    lora_backward<double>(
        runtime, Mat<double>::dense(grads.data(), M, in), grads.data() + M * in,
        grads.data() + M * in + r * in, Mat<const double>::dense(c.data(), M, out), z.data(),
        Mat<const double>::dense(x.data(), M, in), a.data(), b.data(), r, scale, mask, scratch);
    return grads;
  };
  const auto grads = backward(rt);
  const std::vector<double> dx(grads.begin(), grads.begin() + M * in),
      da(grads.begin() + M * in, grads.begin() + M * in + r * in),
      db(grads.begin() + M * in + r * in, grads.end());
  // Plainly: dB = s dy^T z, dz = s dy B, dA = dz^T drop(x), dx = drop'(dz A).
  std::vector<double> plain(grads.size(), 0.0), dz(M * r, 0.0);
  for (Index i = 0; i < M; ++i)
    for (Index k = 0; k < r; ++k)
      for (Index o = 0; o < out; ++o) {
        plain[M * in + r * in + o * r + k] += scale * c[i * out + o] * z[i * r + k];
        dz[i * r + k] += scale * c[i * out + o] * b[o * r + k];
      }
  for (Index i = 0; i < M; ++i)
    for (Index j = 0; j < in; ++j)
      for (Index k = 0; k < r; ++k) {
        plain[M * in + k * in + j] += dz[i * r + k] * dropped[i * in + j];
        if (dropped[i * in + j] != 0 || x[i * in + j] == 0)
          plain[i * in + j] += dz[i * r + k] * a[k * in + j] / (1 - mask.p);
      }
  EXPECT_LT(testing::max_rel_error(grads, plain), 1e-12);
  if (M * in <= 64) {  // the finite differences: one forward per input and parameter, twice
    EXPECT_LT(testing::max_rel_error(dx, numeric_gradient(x, loss)), tolerance::kFiniteDifference);
    EXPECT_LT(testing::max_rel_error(da, numeric_gradient(a, loss)), tolerance::kFiniteDifference);
    EXPECT_LT(testing::max_rel_error(db, numeric_gradient(b, loss)), tolerance::kFiniteDifference);
  }
  Runtime one_thread(1);
  EXPECT_EQ(forward(one_thread), forward(rt));
  EXPECT_EQ(backward(one_thread), grads);
  // The mask really drops something (and keeps something) at p = 0.3.
  const auto zeros = std::count(dropped.begin(), dropped.end(), 0.0);
  EXPECT_GT(zeros, 0);
  EXPECT_LT(zeros, M * in);
}

INSTANTIATE_TEST_SUITE_P(Shapes, LoraBranchGradCheck,
                         ::testing::Values(LoraShape{6, 5, 4, 2},     // fused, one block
                                           LoraShape{64, 70, 33, 8},  // fused, threads, blocks
                                           LoraShape{13, 70, 9, 4},   // rows in groups of 2
                                           LoraShape{5, 16, 3, 1},    // one group of 8, 5 rows
                                           LoraShape{11, 9, 6, 3},    // rank not dividing 8
                                           LoraShape{9, 7, 5, 17}),   // matmuls
                         [](const auto& info) {
                           const LoraShape& s = info.param;
                           std::string name = "M";  // appended: GCC 12 misreads a + chain here
                           name += std::to_string(s.M);
                           name += "_in";
                           name += std::to_string(s.in);
                           name += "_r";
                           name += std::to_string(s.r);
                           return name;
                         });

// The whole model in double: every LoRA gradient (all seven modules, dropout on) by finite
// differences of the mean loss, with and without recompute.
class ModelGradCheck : public ::testing::TestWithParam<Recompute> {};

TEST_P(ModelGradCheck, LoraGradientsMatchFiniteDifferences) {
  Runtime rt(2);
  LlamaConfig config;
  config.hidden_size = 12;
  config.intermediate_size = 10;
  config.num_layers = 2;
  config.num_heads = 4;
  config.num_kv_heads = 2;
  config.head_dim = 4;
  config.vocab_size = 11;
  config.rms_norm_eps = 1e-5;
  config.tie_word_embeddings = false;
  auto weights = random_llama_weights<double>(rt, config, 3, 0.3);
  LoraConfig lora;
  lora.rank = 2;
  lora.alpha = 3;
  lora.dropout = 0.2;
  lora.targets = parse_lora_targets("all-linear");
  const LoraLayout layout(config, lora);
  std::vector<double> params(static_cast<std::size_t>(layout.size()));
  init_lora_params<double>(params, layout, 5);
  const auto noise = random_vector(params.size(), 18, 0.3);
  for (std::size_t i = 0; i < params.size(); ++i) params[i] += noise[i];  // B != 0

  ComputeOptions options;
  options.recompute = GetParam();
  options.attention.block = 2;
  options.mlp_chunk_rows = 3;
  options.head_chunk_rows = 2;
  LlamaModel<Fp64Policy> model(rt, weights, &layout, options);
  Batch batch;
  batch.add_sequence({1, 4, 7, 2, 9}, {kIgnoreIndex, 4, 7, 2, 9}, 0);
  batch.add_sequence({3, 3, 10, 0}, {3, 3, 10, 0}, 1);
  const double count = static_cast<double>(batch.label_count());
  const StepKey key{42, 7};

  std::vector<double> grads(params.size(), 0.0);
  model.forward_backward(batch, params, grads, 1.0 / count, key);
  auto loss = [&] {
    std::vector<double> scratch(params.size(), 0.0);
    return model.forward_backward(batch, params, scratch, 1.0 / count, key) / count;
  };
  const auto numeric = numeric_gradient(params, loss);
  for (const auto& e : layout.entries()) {
    const std::span<const double> ours(grads.data() + e.offset,
                                       static_cast<std::size_t>(e.numel()));
    const std::span<const double> fd(numeric.data() + e.offset,
                                     static_cast<std::size_t>(e.numel()));
    EXPECT_LT(testing::max_rel_error(ours, fd), tolerance::kFiniteDifference) << e.name;
  }
  // The dropout masks are a function of (seed, step): the same key gives the same loss, and
  // another step or seed draws other masks (a model that reused one mask every step would
  // pass every gradient check above).
  const double at_key = loss();
  EXPECT_EQ(loss(), at_key);
  for (const StepKey other : {StepKey{42, 8}, StepKey{43, 7}}) {
    std::vector<double> scratch(params.size(), 0.0);
    EXPECT_NE(model.forward_backward(batch, params, scratch, 1.0 / count, other) / count, at_key)
        << "seed " << other.seed << ", step " << other.step;
  }
}

INSTANTIATE_TEST_SUITE_P(Recompute, ModelGradCheck,
                         ::testing::Values(Recompute::kFull, Recompute::kAttention,
                                           Recompute::kAttentionMlp, Recompute::kSelective,
                                           Recompute::kNone),
                         [](const auto& info) { return std::string(recompute_name(info.param)); });

}  // namespace
}  // namespace zerolora
