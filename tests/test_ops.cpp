// CPU kernels against plain double references: attention in fp32 and bf16 (tile-size
// invariance, segment isolation, the bf16-softmax option, the direct SIMD kernel), the SIMD
// helpers, RMSNorm, bf16 rounding, and Batch construction. Matmul: test_matmul.cpp.
#include <gtest/gtest.h>
#include <omp.h>

#include <bit>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <utility>

#include "core/error.hpp"
#include "model/batch.hpp"
#include "ops/attention.hpp"
#include "ops/convert.hpp"
#include "ops/cudnn_plan.hpp"
#include "ops/kernels.hpp"
#include "ops/rmsnorm.hpp"
#include "ops/simd.hpp"
#include "test_util.hpp"

// ops/simd.hpp's vectors are only ever passed to inlined helpers: no ABI to change.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace zerolora {
namespace {

using testing::random_values;

struct AttentionCase {
  AttentionShape shape{6, 2, 8};
  std::vector<Segment> segments{{0, 13}, {13, 1}, {14, 20}};
  Index M = 34;
};

template <class T, class Mm>
std::vector<T> run_attention(const std::vector<double>& qkv_double, const AttentionCase& c,
                             Index block, bool softmax_bf16 = false,
                             AttentionOptions::Kernel kernel = AttentionOptions::Kernel::kTiled) {
  Runtime rt(2);
  std::vector<T> qkv(qkv_double.begin(), qkv_double.end());
  std::vector<T> out(c.M * c.shape.heads * c.shape.head_dim), lse(c.shape.heads * c.M);
  AttentionOptions options;
  options.block = block;
  options.softmax_bf16 = softmax_bf16;
  options.kernel = kernel;
  AttentionWorkspace ws;
  attention_forward<T, Mm>(rt, out.data(), lse.data(), qkv.data(), c.segments, c.M, c.shape,
                           options, ws);
  return out;
}

// Plain softmax attention in double, one query at a time.
std::vector<double> reference_attention(const std::vector<double>& qkv, const AttentionCase& c) {
  const Index H = c.shape.heads, KV = c.shape.kv_heads, hd = c.shape.head_dim,
              ld = c.shape.qkv_stride();
  std::vector<double> out(c.M * H * hd, 0.0);
  for (const auto& seg : c.segments)
    for (Index h = 0; h < H; ++h) {
      const Index g = h / (H / KV);
      for (Index i = 0; i < seg.length; ++i) {
        // Keys outside a sliding window get -inf: exp gives 0.
        std::vector<double> s(i + 1, -std::numeric_limits<double>::infinity());
        double mx = -1e300, sum = 0;
        const Index first = c.shape.window > 0 ? std::max<Index>(0, i - c.shape.window + 1) : 0;
        for (Index j = first; j <= i; ++j) {
          double dot = 0;
          for (Index d = 0; d < hd; ++d)
            dot += qkv[(seg.begin + i) * ld + h * hd + d] *
                   qkv[(seg.begin + j) * ld + (H + g) * hd + d];
          s[j] = dot / std::sqrt(static_cast<double>(hd));
          mx = std::max(mx, s[j]);
        }
        for (auto& x : s) sum += (x = std::exp(x - mx));
        for (Index j = 0; j <= i; ++j)
          for (Index d = 0; d < hd; ++d)
            out[(seg.begin + i) * H * hd + h * hd + d] +=
                s[j] / sum * qkv[(seg.begin + j) * ld + (H + KV + g) * hd + d];
      }
    }
  return out;
}

TEST(Attention, CudnnBuffersCoverTheTokenBoundAndATilePastIt) {
  // Host arithmetic (the GPU's buffers and the memory estimate): the backward graph's token
  // bound, then 256 rows, whatever M.
  EXPECT_EQ(cudnn_padded_rows(1), 128 + 256);
  EXPECT_EQ(cudnn_padded_rows(2700), 3072 + 256) << "2048's quarter steps";
  EXPECT_EQ(cudnn_padded_rows(8192), 8192 + 256);
  EXPECT_EQ(cudnn_padded_rows(8193), 10240 + 256);
  EXPECT_EQ(cudnn_padded_rows(20480), 20480 + 256) << "the seed's 10 x 2048";
  for (Index M = 1; M < 5000; M += 37) EXPECT_GE(cudnn_padded_rows(M), M + 256) << M;
}

TEST(Attention, ShapeNamesEachBranchsColumnsOfTheFusedRows) {
  // GQA: 4 query heads and 2 key/value heads of 8 (q 32 columns, k and v 16 each).
  const AttentionShape shape{4, 2, 8};
  EXPECT_EQ(shape.qkv_stride(), 64);
  const Index first[3] = {0, 32, 48}, width[3] = {32, 16, 16};
  for (int branch = 0; branch < 3; ++branch) {
    EXPECT_EQ(shape.qkv_first_column(branch), first[branch]) << branch;
    EXPECT_EQ(shape.qkv_width(branch), width[branch]) << branch;
  }
  float rows[2 * 64] = {};
  const Mat<float> v = qkv_branch_columns(rows, 2, 2, shape);
  EXPECT_EQ(v.data, rows + 48);
  EXPECT_EQ(v.rows, 2);
  EXPECT_EQ(v.cols, 16);
  EXPECT_EQ(v.rs, 64);
  EXPECT_EQ(v.cs, 1);
}

TEST(Attention, MatchesPlainSoftmaxInEveryPrecision) {
  const AttentionCase c;
  const auto qkv = random_values<double>(c.M * c.shape.qkv_stride(), 5);
  const auto expected = reference_attention(qkv, c);
  for (Index block : {1, 3, 16, 128}) {
    EXPECT_LT(testing::max_rel_error(run_attention<double, double>(qkv, c, block), expected), 1e-12)
        << block;
    EXPECT_LT(testing::max_rel_error(run_attention<float, float>(qkv, c, block), expected), 1e-5)
        << block;
    // bf16 operands (q, k, v and probabilities) each carry 2^-9 relative rounding.
    EXPECT_LT(testing::max_rel_error(run_attention<float, bf16>(qkv, c, block), expected), 2e-2)
        << block;
  }
  // The direct kernel (small heads): same results.
  const auto direct = AttentionOptions::Kernel::kDirect;
  EXPECT_LT(
      testing::max_rel_error(run_attention<double, double>(qkv, c, 1, false, direct), expected),
      1e-12);
  EXPECT_LT(testing::max_rel_error(run_attention<float, float>(qkv, c, 1, false, direct), expected),
            1e-5);
  EXPECT_LT(testing::max_rel_error(run_attention<float, bf16>(qkv, c, 1, false, direct), expected),
            1e-5);
  const auto rounded = run_attention<float, float>(qkv, c, 16, true);
  const double err = testing::max_rel_error(rounded, expected);
  EXPECT_GT(err, 1e-5) << "bf16 softmax must change the result";
  EXPECT_LT(err, 2e-2);
}

// Mistral's sliding window: each row sees its last `window` positions, in both kernels, and
// generation's cached attention gives the rows the full forward gives.
TEST(Attention, SlidingWindowInBothKernelsAndTheCache) {
  AttentionCase c;
  c.shape.window = 5;  // shorter than two of the segments
  const auto qkv = random_values<double>(c.M * c.shape.qkv_stride(), 15);
  const auto expected = reference_attention(qkv, c);
  AttentionCase full = c;
  full.shape.window = 0;
  EXPECT_GT(testing::max_rel_error(reference_attention(qkv, full), expected), 1e-3)
      << "the window must matter here";
  for (Index block : {1, 3, 16})
    EXPECT_LT(testing::max_rel_error(run_attention<double, double>(qkv, c, block), expected), 1e-12)
        << block;
  EXPECT_LT(testing::max_rel_error(
                run_attention<double, double>(qkv, c, 1, false, AttentionOptions::Kernel::kDirect),
                expected),
            1e-12);
  // The cache: the last segment's rows, two already cached and the rest new.
  Runtime rt(2);
  const Segment seg = c.segments[2];
  const Index H = c.shape.heads, KV = c.shape.kv_heads, hd = c.shape.head_dim,
              ld = c.shape.qkv_stride();
  std::vector<double> keys(seg.length * KV * hd), values(seg.length * KV * hd);
  for (Index i = 0; i < seg.length; ++i)
    for (Index x = 0; x < KV * hd; ++x) {
      keys[i * KV * hd + x] = qkv[(seg.begin + i) * ld + H * hd + x];
      values[i * KV * hd + x] = qkv[(seg.begin + i) * ld + (H + KV) * hd + x];
    }
  const Index first = 2, rows = seg.length - first;
  std::vector<double> out(rows * H * hd);
  attention_cached<double>(rt, out.data(), qkv.data() + (seg.begin + first) * ld, ld, keys.data(),
                           values.data(), first, rows, c.shape);
  const std::vector<double> want(expected.begin() + (seg.begin + first) * H * hd,
                                 expected.begin() + (seg.begin + seg.length) * H * hd);
  EXPECT_LT(testing::max_rel_error(out, want), 1e-12);
}

TEST(Attention, SegmentsDoNotSeeEachOther) {
  const AttentionCase c;
  auto qkv = random_values<double>(c.M * c.shape.qkv_stride(), 6);
  const auto before = run_attention<double, double>(qkv, c, 4);
  for (Index i = 14 * c.shape.qkv_stride(); i < c.M * c.shape.qkv_stride(); ++i)
    qkv[i] += 1.0;  // last segment
  const auto after = run_attention<double, double>(qkv, c, 4);
  const Index first_rows = 14 * c.shape.heads * c.shape.head_dim;
  EXPECT_TRUE(std::equal(before.begin(), before.begin() + first_rows, after.begin()));
  EXPECT_FALSE(std::equal(before.begin() + first_rows, before.end(), after.begin() + first_rows));
}

// The SIMD exp (ops/simd.hpp) within its stated bound, and 0 below the range and for -inf.
TEST(Simd, ExpWithinItsStatedBound) {
  using simd::Vec;
  double worst = 0;
  for (float x = -87.25f; x < 88.25f; x += 0.0137f) {
    const Vec<float> e = simd::exp(simd::iota(0.0f) * 1e-3f + x);  // 16 nearby points
    for (int i = 0; i < simd::kLanes<float>; ++i) {
      const double arg = static_cast<double>(x + static_cast<float>(i) * 1e-3f);
      worst = std::max(worst, std::abs(e[i] / std::exp(arg) - 1.0));
    }
  }
  EXPECT_LT(worst, 2.5e-7);
  // exp_nonpositive (softmax numerators): the same values where its argument is <= 0.
  for (float x = -87.25f; x <= 0.0f; x += 0.0137f) {
    const Vec<float> v = simd::iota(0.0f) * -1e-3f + x;
    const Vec<float> a = simd::exp(v), b = simd::exp_nonpositive(v);
    for (int i = 0; i < simd::kLanes<float>; ++i) ASSERT_EQ(a[i], b[i]) << v[i];
  }
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  for (const bool nonpositive : {false, true}) {
    auto exp_lane = [&](float x, int lane) -> float {  // (a float out: no vector crosses a call)
      const Vec<float> v = simd::splat(x);
      return (nonpositive ? simd::exp_nonpositive(v) : simd::exp(v))[lane];
    };
    EXPECT_EQ(exp_lane(-inf, 0), 0.0f);
    EXPECT_EQ(exp_lane(-100.0f, 3), 0.0f);
    EXPECT_TRUE(std::isnan(exp_lane(nan, 7))) << "NaN must stay NaN";
  }
  EXPECT_TRUE(std::isfinite(simd::exp(simd::splat(1000.0f))[5]));
}

// FlushDenormals flushes denormal results (and inputs) to zero in its scope only.
TEST(Simd, FlushDenormalsHoldsForItsScopeOnly) {
  volatile float tiny = 1e-30f, scale = 1e-10f;  // volatile: computed at run time
  const float before = tiny * scale;             // 1e-40: denormal
  float inside = 1;
  {
    const simd::FlushDenormals flush;
    inside = tiny * scale;
  }
  const float after = tiny * scale;
  EXPECT_GT(before, 0.0f);
  EXPECT_EQ(inside, 0.0f);
  EXPECT_EQ(after, before);
}

// The vector bf16 rounding gives core/bf16.hpp's bits, ties and NaN included.
TEST(Simd, RoundToBf16MatchesTheScalarRounding) {
  const float values[] = {1.0f,
                          1.00390625f /* a tie, to even */,
                          1.01171875f /* a tie, up */,
                          -3.14159f,
                          1e-38f,
                          3.0e38f,
                          -0.0f,
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          std::bit_cast<float>(0x7fffffffu),
                          std::bit_cast<float>(0xff812345u),
                          6.1e-5f,
                          123456.789f,
                          -7.5e-3f,
                          0.3333333f,
                          65504.0f};
  simd::Vec<float> v;
  for (int i = 0; i < simd::kLanes<float>; ++i) v[i] = values[i];
  const simd::Vec<float> rounded = simd::round_to_bf16(v);
  for (int i = 0; i < simd::kLanes<float>; ++i) {
    const float want = to_float(to_bf16(values[i]));
    if (std::isnan(want))
      EXPECT_TRUE(std::isnan(rounded[i])) << i;
    else
      EXPECT_EQ(std::bit_cast<std::uint32_t>(rounded[i]), std::bit_cast<std::uint32_t>(want)) << i;
  }
}

template <class T>
void check_transpose_sum() {
  constexpr int N = simd::kLanes<T>;
  simd::Vec<T> v[N];
  T expected[N] = {};
  for (int i = 0; i < N; ++i)
    for (int lane = 0; lane < N; ++lane) {
      v[i][lane] = static_cast<T>(1 + i * 37 + lane * lane);  // distinct, exact in float
      expected[i] += v[i][lane];
    }
  const simd::Vec<T> sums = simd::transpose_sum<T>(v);
  for (int i = 0; i < N; ++i) EXPECT_EQ(sums[i], expected[i]) << i;
}

TEST(Simd, TransposeSumGivesEachVectorsLaneSum) {
  check_transpose_sum<float>();
  check_transpose_sum<double>();
}

// Attention forward then backward (output gradient d_out) in precision T: out and dqkv.
template <class T>
std::pair<std::vector<T>, std::vector<T>> attention_forward_backward(
    const std::vector<double>& qkv, const std::vector<double>& d_out,
    const std::vector<Segment>& segments, Index M, const AttentionShape& shape, int threads,
    AttentionOptions::Kernel kernel, bool softmax_bf16 = false) {
  Runtime rt(threads);
  AttentionOptions options;
  options.kernel = kernel;
  options.softmax_bf16 = softmax_bf16;
  AttentionWorkspace ws;
  const Index W3 = shape.qkv_stride(), Qd = shape.heads * shape.head_dim;
  std::vector<T> q(qkv.begin(), qkv.end()), g(d_out.begin(), d_out.end());
  std::vector<T> out(M * Qd), lse(shape.heads * M), dqkv(M * W3, T{7});  // 7: must be overwritten
  attention_forward<T, T>(rt, out.data(), lse.data(), q.data(), segments, M, shape, options, ws);
  attention_backward<T, T>(rt, dqkv.data(), g.data(), q.data(), out.data(), lse.data(), segments, M,
                           shape, options, ws);
  return {out, dqkv};
}

// The small-head SIMD kernel in fp32 against the tiled kernel in double, forward and
// backward, over head dims that fill a vector chunk or not, segment lengths around the vector
// width, grouped-query heads and sliding windows (shorter than a vector, and longer, so that
// whole blocks lie before a row's window); and the same bits with 1 and 3 threads.
TEST(Attention, DirectKernelMatchesTheDoubleReferenceOnManyShapes) {
  const std::vector<Segment> segments{{0, 1}, {1, 17}, {18, 16}, {34, 2}, {36, 47}, {83, 33}};
  const Index M = 116;
  using Kernel = AttentionOptions::Kernel;
  for (const AttentionShape base :
       {AttentionShape{4, 2, 8}, AttentionShape{4, 1, 12}, AttentionShape{2, 2, 4},
        AttentionShape{6, 3, 16}, AttentionShape{2, 1, 33}, AttentionShape{2, 2, 64},
        AttentionShape{2, 1, 128}})
    // 37: i0 - 36 is a multiple of 16 for some four-row pass, where a block lies before the
    // window of the pass's first row but not of its last
    for (const Index window : {0, 7, 37}) {
      AttentionShape shape = base;
      shape.window = window;
      const auto qkv = random_values<double>(M * shape.qkv_stride(), 21);
      const auto d_out = random_values<double>(M * shape.heads * shape.head_dim, 22);
      auto run = [&]<class T>(T, int threads, Kernel kernel) {
        return attention_forward_backward<T>(qkv, d_out, segments, M, shape, threads, kernel);
      };
      const auto [want_out, want_grad] = run(0.0, 2, Kernel::kTiled);
      const auto [out, grad] = run(0.0f, 2, Kernel::kDirect);
      const std::string where =
          "heads " + std::to_string(shape.heads) + "/" + std::to_string(shape.kv_heads) +
          " head dim " + std::to_string(shape.head_dim) + " window " + std::to_string(window);
      EXPECT_LT(testing::max_rel_error(out, want_out), 1e-5) << where;
      EXPECT_LT(testing::max_rel_error(grad, want_grad), 1e-5) << where;
      const auto [out_double, grad_double] = run(0.0, 2, Kernel::kDirect);
      EXPECT_LT(testing::max_rel_error(out_double, want_out), 1e-12) << where;
      EXPECT_LT(testing::max_rel_error(grad_double, want_grad), 1e-12) << where;
      const auto [out_one, grad_one] = run(0.0f, 1, Kernel::kDirect);
      const auto [out_three, grad_three] = run(0.0f, 3, Kernel::kDirect);
      EXPECT_EQ(out_one, out) << where;
      EXPECT_EQ(grad_one, grad) << where;
      EXPECT_EQ(out_three, out) << where;
      EXPECT_EQ(grad_three, grad) << where;
    }
}

// A NaN in a query row reaches that row's output (and is not averaged away into a finite
// value): the non-finite guards downstream must see it.
TEST(Attention, DirectKernelPassesNaNThrough) {
  const AttentionCase c;
  auto qkv = random_values<double>(c.M * c.shape.qkv_stride(), 24);
  qkv[16 * c.shape.qkv_stride()] = std::nan("");  // row 16's first query element, head 0
  const auto out = run_attention<float, float>(qkv, c, 1, false, AttentionOptions::Kernel::kDirect);
  EXPECT_TRUE(std::isnan(out[16 * c.shape.heads * c.shape.head_dim]));
}

// The tiled kernel packs each segment's heads apart and pads them with zeros, so a tile that
// runs past its segment's end (tiles are whole multiples of 16 rows and keys) never reads the
// next segment: a NaN and an Inf there leave the other segments' outputs and gradients bit for
// bit as they were, forward and backward, and the poisoned segment's own outputs go non-finite.
TEST(Attention, TiledKernelKeepsSegmentsApartPastTheirEnds) {
  const AttentionCase c;  // segments of 13, 1 and 20 rows
  const auto qkv = random_values<double>(c.M * c.shape.qkv_stride(), 26);
  const auto d_out = random_values<double>(c.M * c.shape.heads * c.shape.head_dim, 27);
  auto poisoned = qkv;
  const Index ld = c.shape.qkv_stride(), H = c.shape.heads, hd = c.shape.head_dim;
  poisoned[20 * ld + H * hd] = std::nan("");  // a key
  poisoned[25 * ld + (H + c.shape.kv_heads) * hd] = std::numeric_limits<double>::infinity();
  using Kernel = AttentionOptions::Kernel;
  const auto [out, grad] =
      attention_forward_backward<float>(qkv, d_out, c.segments, c.M, c.shape, 2, Kernel::kTiled);
  const auto [bad_out, bad_grad] = attention_forward_backward<float>(
      poisoned, d_out, c.segments, c.M, c.shape, 2, Kernel::kTiled);
  const Index clean_rows = c.segments[2].begin;  // rows of segments 0 and 1
  EXPECT_TRUE(std::equal(out.begin(), out.begin() + clean_rows * H * hd, bad_out.begin()));
  EXPECT_TRUE(std::equal(grad.begin(), grad.begin() + clean_rows * ld, bad_grad.begin()));
  EXPECT_FALSE(std::isfinite(bad_out[(c.M - 1) * H * hd]));
}

// --attn_softmax_bf16 in the SIMD kernel: scores and probabilities rounded as in the tiled
// kernel, forward and backward (the same values up to a rare bf16 tie broken by fp32 sums in
// another order).
TEST(Attention, DirectKernelRoundsTheSoftmaxToBf16LikeTheTiledOne) {
  const AttentionCase c;
  const auto qkv = random_values<double>(c.M * c.shape.qkv_stride(), 23);
  const auto d_out = random_values<double>(c.M * c.shape.heads * c.shape.head_dim, 25);
  const auto exact = reference_attention(qkv, c);
  using Kernel = AttentionOptions::Kernel;
  const auto [tiled_out, tiled_grad] = attention_forward_backward<float>(
      qkv, d_out, c.segments, c.M, c.shape, 2, Kernel::kTiled, true);
  const auto [out, grad] = attention_forward_backward<float>(qkv, d_out, c.segments, c.M, c.shape,
                                                             2, Kernel::kDirect, true);
  const auto [plain_out, plain_grad] = attention_forward_backward<float>(
      qkv, d_out, c.segments, c.M, c.shape, 2, Kernel::kDirect, false);
  EXPECT_GT(testing::max_rel_error(out, exact), 1e-5) << "bf16 softmax must change the result";
  EXPECT_LT(testing::max_rel_error(out, exact), 2e-2);
  EXPECT_LT(testing::mean_rel_error(out, tiled_out), 1e-5);
  EXPECT_GT(testing::max_rel_error(grad, plain_grad), 1e-5) << "and the gradient";
  EXPECT_LT(testing::max_rel_error(grad, plain_grad), 5e-2);
  EXPECT_LT(testing::mean_rel_error(grad, tiled_grad), 1e-5);
}

TEST(Batch, ShiftsLabelsPerSegmentAndValidates) {
  Batch batch;
  batch.add_sequence({1, 5, 6, 7}, {kIgnoreIndex, kIgnoreIndex, 6, 7}, 0);
  batch.add_sequence({1, 9}, {1, 9}, 1);
  EXPECT_EQ(batch.targets,
            (std::vector<std::int32_t>{kIgnoreIndex, 6, 7, kIgnoreIndex, 9, kIgnoreIndex}));
  EXPECT_EQ(batch.label_count(), 3);
  EXPECT_EQ(batch.longest_segment(), 4);
  EXPECT_NO_THROW(batch.validate(10));
  EXPECT_THROW(batch.validate(9), ShapeError);  // token 9 is outside a 9-token vocabulary
  batch.tokens[0] = -1;
  EXPECT_THROW(batch.validate(10), ShapeError);
  EXPECT_THROW(batch.add_sequence({1, 2}, {1}, 2), ShapeError);
  EXPECT_THROW(batch.add_sequence({}, {}, 2), ShapeError);
}

}  // namespace
}  // namespace zerolora

namespace zerolora {
namespace {

// RMSNorm's value, against the formula: the finite-difference check only proves backward
// consistent with forward, so a forward that dropped epsilon would pass it. The inputs are
// small enough that epsilon changes the result by about 50%.
TEST(RmsNorm, ForwardMatchesTheFormula) {
  Runtime rt(2);
  const Index M = 4, D = 6;
  const double eps = 1e-2;
  std::vector<double> x(M * D), w(D), y(M * D), rstd(M);
  for (Index i = 0; i < M * D; ++i) x[i] = 0.1 * std::sin(1.0 + 0.7 * static_cast<double>(i));
  for (Index j = 0; j < D; ++j) w[j] = 0.5 + 0.25 * static_cast<double>(j);
  rmsnorm_forward(rt, y.data(), rstd.data(), x.data(), w.data(), M, D, eps);
  for (Index r = 0; r < M; ++r) {
    double mean_square = 0;
    for (Index j = 0; j < D; ++j) mean_square += x[r * D + j] * x[r * D + j] / D;
    const double expected_rstd = 1.0 / std::sqrt(mean_square + eps);
    EXPECT_NEAR(rstd[r], expected_rstd, 1e-12 * expected_rstd) << "row " << r;
    for (Index j = 0; j < D; ++j)
      EXPECT_NEAR(y[r * D + j], x[r * D + j] * expected_rstd * w[j], 1e-12) << r << ", " << j;
  }
}

// bf16 rounding, everywhere the engine rounds (the scalar conversion, whole arrays in
// parallel, rounding in place, strided blocks), against an independent round-to-nearest-even:
// std::nearbyint of the value in units of its bf16 ulp. For every bf16 value: the tie
// halfway above it, and the floats just below and above that tie; plus NaN, Inf, overflow.
float reference_bf16(float x) {
  if (std::isnan(x) || std::isinf(x)) return x;
  if (x == 0) return x;
  const int exponent = std::max(std::ilogb(x), -126);  // subnormals share the smallest ulp
  const double ulp = std::ldexp(1.0, exponent - 7);
  const double rounded = std::nearbyint(static_cast<double>(x) / ulp) * ulp;  // ties to even
  const double largest = std::ldexp(255.0 / 128.0, 127);                      // 0x7f7f
  if (std::abs(rounded) > largest) return std::copysign(INFINITY, x);
  return static_cast<float>(rounded);
}

TEST(Bf16, RoundsToNearestEvenEverywhere) {
  std::vector<float> inputs;
  for (std::uint32_t high = 0; high < 0x10000; ++high)
    for (std::uint32_t low : {0x0000u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) {
      const float v = std::bit_cast<float>((high << 16) | low);
      if (!std::isnan(v)) inputs.push_back(v);
    }
  ASSERT_GT(inputs.size(), 32768u * 4);  // the parallel path of convert()
  Runtime rt(2);
  std::vector<bf16> converted(inputs.size());
  convert(rt, converted.data(), inputs.data(), static_cast<Index>(inputs.size()));
  std::vector<float> in_place = inputs;
  std::vector<bf16> copy(inputs.size());
  round_to_bf16(rt, in_place.data(), copy.data(), static_cast<Index>(inputs.size()));
  const Index cols = 5, rows = static_cast<Index>(inputs.size()) / cols;
  std::vector<bf16> block(static_cast<std::size_t>(rows * cols));
  convert_rows(rt, block.data(), inputs.data(), cols, rows, cols);
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const float expected = reference_bf16(inputs[i]);
    const bool ok = to_float(to_bf16(inputs[i])) == expected &&
                    to_float(converted[i]) == expected && in_place[i] == expected &&
                    to_float(copy[i]) == expected &&
                    (i >= block.size() || to_float(block[i]) == expected) &&
                    std::signbit(to_float(converted[i])) == std::signbit(expected);
    if (!ok && ++wrong <= 5)
      ADD_FAILURE() << "bf16 of " << inputs[i] << " (bits " << std::hex
                    << std::bit_cast<std::uint32_t>(inputs[i]) << std::dec << "): got "
                    << to_float(to_bf16(inputs[i])) << ", expected " << expected;
  }
  EXPECT_EQ(wrong, 0u);
  // Ties, spelled out: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 (even: 1); 1 + 3 * 2^-8
  // halfway between 1 + 2^-7 and 1 + 2^-6 (even: the latter).
  EXPECT_EQ(to_float(to_bf16(1.0f + 0x1p-8f)), 1.0f);
  EXPECT_EQ(to_float(to_bf16(1.0f + 3 * 0x1p-8f)), 1.0f + 0x1p-6f);
  EXPECT_EQ(to_float(to_bf16(-(1.0f + 3 * 0x1p-8f))), -(1.0f + 0x1p-6f));
  // NaN stays NaN (also a NaN whose payload lies only in the low bits), Inf stays Inf, and
  // the largest float rounds up to Inf as torch's conversion does.
  EXPECT_TRUE(std::isnan(to_float(to_bf16(std::bit_cast<float>(0x7f800001u)))));
  EXPECT_TRUE(std::isnan(to_float(to_bf16(-NAN))));
  EXPECT_EQ(to_float(to_bf16(INFINITY)), INFINITY);
  EXPECT_EQ(to_float(to_bf16(-INFINITY)), -INFINITY);
  EXPECT_EQ(to_float(to_bf16(std::numeric_limits<float>::max())), INFINITY);
  // The smallest subnormal float is below half a bf16 subnormal ulp: it rounds to zero.
  EXPECT_EQ(to_float(to_bf16(std::numeric_limits<float>::denorm_min())), 0.0f);
}

}  // namespace
}  // namespace zerolora
