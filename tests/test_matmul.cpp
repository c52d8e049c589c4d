// The matmul path against plain double references (oneDNN and the loop; strides, transposes,
// alpha, accumulate; large row-major products whole; the bulk + rest split of the rows and its
// independence of history; the bounded primitive cache; from inside parallel regions) and the
// fused LoRA projection's rank paths in fp32.
#include <gtest/gtest.h>
#include <omp.h>

#include <random>
#include <vector>

#include "core/rng.hpp"
#include "core/runtime_state.hpp"
#include "ops/lora_branch.hpp"
#include "ops/matmul.hpp"
#include "test_util.hpp"

namespace zerolora {
namespace {

using testing::random_values;

template <class In>
void check_matmul(Runtime& rt, Index M, Index N, Index K, bool transpose_b, float alpha,
                  bool accumulate, double tol) {
  const auto a = random_values<In>(M * K, 1);
  const auto b = random_values<In>(K * N, 2);
  auto c = random_values<float>(M * N, 3);
  std::vector<double> expected(M * N);
  for (Index i = 0; i < M; ++i)
    for (Index j = 0; j < N; ++j) {
      double s = 0;
      for (Index k = 0; k < K; ++k)
        s += to_float(a[i * K + k]) *
             static_cast<double>(to_float(transpose_b ? b[j * K + k] : b[k * N + j]));
      expected[i * N + j] = alpha * s + (accumulate ? c[i * N + j] : 0.0);
    }
  const Mat<const In> bm =
      transpose_b ? Mat<const In>::dense(b.data(), N, K).t() : Mat<const In>::dense(b.data(), K, N);
  matmul<In, float>(rt, Mat<const In>::dense(a.data(), M, K), bm, Mat<float>::dense(c.data(), M, N),
                    alpha, accumulate);
  EXPECT_LT(testing::max_rel_error(c, expected), tol) << M << "x" << N << "x" << K;
}

TEST(Matmul, OneDnnAndLoopPathsMatchDoubleReference) {
  Runtime rt(2);
  for (bool t : {false, true})
    for (bool acc : {false, true}) {
      check_matmul<float>(rt, 37, 29, 53, t, 0.5f, acc, 1e-6);  // oneDNN
      check_matmul<float>(rt, 3, 4, 5, t, 2.0f, acc, 1e-6);     // loop (tiny)
      check_matmul<bf16>(rt, 64, 48, 96, t, 1.0f, acc, 1e-6);   // exact bf16 products, fp32 sums
    }
}

// A large bf16 product (2^30 multiply-adds or more) with a row-major b runs all its rows on the
// rows-at-execution primitive (ops/matmul.cpp), one with a K-contiguous b as bulk and rest;
// both against the double reference, with alpha and accumulation.
TEST(Matmul, LargeRowMajorProductsRunWholeOnTheRowsAtExecutionPrimitive) {
  Runtime rt(2);
  for (bool t : {false, true})
    for (bool acc : {false, true}) check_matmul<bf16>(rt, 1025, 1024, 1024, t, 0.5f, acc, 1e-5);
}

// Row counts that are not a multiple of a power of two near M / 8 run as an exact-primitive bulk
// plus a rest whose row count is given at execution (ops/matmul.cpp): both parts, through
// strided views of A and C, with alpha and accumulation, against the double reference; and the
// result for one M is the same whatever the runtime ran before (resumed runs rely on it).
template <class In>
std::vector<float> strided_matmul(Runtime& rt, Index M, Index N, Index K, float alpha,
                                  bool accumulate, std::vector<double>* expected) {
  const Index lda = K + 3, ldc = N + 5;  // row strides wider than the rows
  const auto a = random_values<In>(M * lda, 11);
  const auto b = random_values<In>(N * K, 12);  // a weight [N, K], used transposed
  auto c = random_values<float>(M * ldc, 13);
  if (expected) {
    expected->assign(c.begin(), c.end());
    for (Index i = 0; i < M; ++i)
      for (Index j = 0; j < N; ++j) {
        double sum = 0;
        for (Index k = 0; k < K; ++k)
          sum += static_cast<double>(to_float(a[i * lda + k])) * to_float(b[j * K + k]);
        (*expected)[i * ldc + j] = alpha * sum + (accumulate ? c[i * ldc + j] : 0.0);
      }
  }
  matmul<In, float>(rt, Mat<const In>{a.data(), M, K, lda, 1},
                    Mat<const In>::dense(b.data(), N, K).t(), Mat<float>{c.data(), M, N, ldc, 1},
                    alpha, accumulate);
  return c;
}

TEST(Matmul, BulkAndRestOfTheRowsMatchTheReferenceAndDependOnlyOnM) {
  for (Index M : {64, 65, 100, 881, 1000}) {
    Runtime rt(2);
    for (bool acc : {false, true}) {
      std::vector<double> expected;
      auto c = strided_matmul<float>(rt, M, 72, 64, 0.5f, acc, &expected);
      EXPECT_LT(testing::max_rel_error(c, expected), 1e-5) << "fp32 M " << M;
      c = strided_matmul<bf16>(rt, M, 40, 96, 1.0f, acc, &expected);
      EXPECT_LT(testing::max_rel_error(c, expected), 1e-5) << "bf16 M " << M;
    }
  }
  Runtime fresh(2), used(2);
  for (Index M : {1000, 817, 100, 883}) strided_matmul<bf16>(used, M, 40, 96, 1.0f, false, nullptr);
  EXPECT_EQ(strided_matmul<bf16>(fresh, 881, 40, 96, 1.0f, false, nullptr),
            strided_matmul<bf16>(used, 881, 40, 96, 1.0f, false, nullptr));
}

// The primitive cache keeps at most max_cached_matmuls primitives, the least recently used
// dropped first, and a shape whose primitive was dropped computes the same when it comes back.
TEST(Matmul, CacheIsBoundedAndRecreatedPrimitivesComputeTheSame) {
  Runtime rt(2);
  rt.state().max_cached_matmuls = 4;
  std::vector<std::vector<float>> first;
  for (int round = 0; round < 2; ++round)
    for (Index i = 0; i < 10; ++i) {
      const auto c = strided_matmul<bf16>(rt, 20 + i, 40, 96, 1.0f, false, nullptr);
      if (round == 0)
        first.push_back(c);
      else
        EXPECT_EQ(c, first[static_cast<std::size_t>(i)]) << "rows " << 20 + i;
      EXPECT_EQ(rt.state().matmuls.size(), std::min<std::size_t>(4, first.size() + round * 10));
      EXPECT_EQ(rt.state().matmul_recency.size(), rt.state().matmuls.size());
    }
}

// The fused LoRA projection in fp32 (16 lanes: ranks 1, 2, 4 and 8 take rows in groups,
// 3 and 16 one row at a time), dropout on, against the same sums in double.
TEST(LoraBranch, FloatProjectionMatchesDoubleForEveryRankPath) {
  Runtime rt(2);
  const Index M = 37, in = 70;
  std::vector<std::uint64_t> row_keys(M);
  for (Index i = 0; i < M; ++i) row_keys[i] = mix64(static_cast<std::uint64_t>(i));
  const DropoutMask mask{0.25, 7, row_keys.data()};
  const auto x = random_values<float>(M * in, 21);
  std::vector<float> dropped(M * in);
  apply_dropout(rt, Mat<float>::dense(dropped.data(), M, in),
                Mat<const float>::dense(x.data(), M, in), mask, false);
  for (Index r : {1, 2, 3, 4, 8, 16}) {
    const auto a = random_values<float>(r * in, 22);
    std::vector<float> z(M * r);
    Buffer<float> scratch;
    lora_project<float>(rt, z.data(), Mat<const float>::dense(x.data(), M, in), a.data(), r, mask,
                        scratch);
    std::vector<double> expected(M * r, 0.0);
    for (Index i = 0; i < M; ++i)
      for (Index k = 0; k < r; ++k)
        for (Index j = 0; j < in; ++j)
          expected[i * r + k] += static_cast<double>(dropped[i * in + j]) * a[k * in + j];
    EXPECT_LT(testing::max_rel_error(z, expected), 1e-5) << "rank " << r;
  }
}

TEST(Matmul, SafeInsideParallelRegions) {
  Runtime rt(2);
  const Index n = 48;
  const auto a = random_values<float>(n * n, 4);
  std::vector<std::vector<float>> outputs(8, std::vector<float>(n * n));
#pragma omp parallel for num_threads(2)
  for (int i = 0; i < 8; ++i)
    matmul<float, float>(rt, Mat<const float>::dense(a.data(), n, n),
                         Mat<const float>::dense(a.data(), n, n),
                         Mat<float>::dense(outputs[i].data(), n, n), static_cast<float>(i + 1));
  for (int i = 1; i < 8; ++i)
    for (Index j = 0; j < n * n; ++j) ASSERT_FLOAT_EQ(outputs[i][j], (i + 1) * outputs[0][j]);
}

}  // namespace
}  // namespace zerolora
