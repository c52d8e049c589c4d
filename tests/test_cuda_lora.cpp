// The CUDA backend's LoRA branch (cuda_lora.cpp, lora.cu) against the CPU engine's, in fp32
// within kFp32Op: one branch on the fused kernels and on cuBLASLt, and the branches that share
// their input as one group, bit for bit each branch's own call; the backward's one pass over the
// input and its gradient bit for bit the kernels it fuses.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "core/profiler.hpp"
#include "core/rng.hpp"
#include "cuda/cuda_ops.hpp"
#include "cuda_backend_test.hpp"
#include "ops/lora_branch.hpp"

namespace zerolora {
namespace {

using cuda_test::CudaBackend;
using cuda_test::random_values;

// The LoRA branch: ranks up to 16 on lora.cu's fused kernels (each rank bound, 4, 8 and 16,
// full and partly used; 600 and 603 rows: three partial sums of dA and dB, the last ragged;
// row counts that leave the contraction's two-row groups and the outer product's eight rows
// in flight a ragged tail), rank 17 on cuBLASLt and dropped copies; dropout off and on; the
// input, output and their gradients as column blocks of wider rows (the fused q/k/v layout) as
// well as dense.
TEST_F(CudaBackend, TheLoraBranchEqualsTheCpu) {
  const Index in = 64, out = 172;
  // rows, rank, row padding
  const std::vector<std::tuple<Index, Index, Index>> shapes{{37, 4, 0},  {37, 1, 5},   {600, 16, 0},
                                                            {37, 17, 0}, {600, 4, 19}, {603, 8, 3},
                                                            {42, 5, 0},  {3, 12, 1}};
  for (const auto& [M, rank, pad] : shapes) {
    const Index ld_in = in + pad, ld_out = out + pad;  // row strides of the views
    auto x = random_values(M * ld_in, 10), y = random_values(M * ld_out, 12);
    auto dy = random_values(M * ld_out, 13), dx = random_values(M * ld_in, 16);
    auto a = random_values(rank * in, 14, 0.3f), b = random_values(out * rank, 15, 0.3f);
    std::vector<std::uint64_t> row_keys(M);
    for (Index i = 0; i < M; ++i) row_keys[i] = mix64(static_cast<std::uint64_t>(i) + 100);
    const float *gx = on_gpu(x), *gdy = on_gpu(dy), *ga = on_gpu(a), *gb = on_gpu(b);
    for (double p : {0.0, 0.05}) {
      SCOPED_TRACE("M=" + std::to_string(M) + " rank=" + std::to_string(rank) +
                   " pad=" + std::to_string(pad) + " p=" + std::to_string(p));
      DropoutMask cpu_mask{p, 12345, row_keys.data()}, gpu_mask{p, 12345, on_gpu(row_keys)};
      std::vector<float> z(M * rank), ya = y, da(rank * in, 0.5f), db(out * rank, -0.25f), dxa = dx;
      float *gz = on_gpu(z), *gya = on_gpu(ya), *gda = on_gpu(da), *gdb = on_gpu(db),
            *gdxa = on_gpu(dxa);
      const Mat<const float> cpu_x{x.data(), M, in, ld_in, 1}, gpu_x{gx, M, in, ld_in, 1};
      cpu_kernels_->lora_forward(Mat<float>{ya.data(), M, out, ld_out, 1}, z.data(), cpu_x,
                                 a.data(), b.data(), rank, 4.0, cpu_mask);
      gpu_kernels_->lora_forward(Mat<float>{gya, M, out, ld_out, 1}, gz, gpu_x, ga, gb, rank, 4.0,
                                 gpu_mask);
      expect_close(to_host(gz, z.size()), z, "lora z");
      expect_close(to_host(gya, ya.size()), ya, "lora forward");
      cpu_kernels_->lora_backward(Mat<float>{dxa.data(), M, in, ld_in, 1}, da.data(), db.data(),
                                  Mat<const float>{dy.data(), M, out, ld_out, 1}, z.data(), cpu_x,
                                  a.data(), b.data(), rank, 4.0, cpu_mask);
      gpu_kernels_->lora_backward(Mat<float>{gdxa, M, in, ld_in, 1}, gda, gdb,
                                  Mat<const float>{gdy, M, out, ld_out, 1}, gz, gpu_x, ga, gb, rank,
                                  4.0, gpu_mask);
      expect_close(to_host(gdxa, dxa.size()), dxa, "lora d input");
      expect_close(to_host(gda, da.size()), da, "lora dA");
      expect_close(to_host(gdb, db.size()), db, "lora dB");
    }
  }
}

// LoRA branches that share their input (q, k and v on the norm's output; gate and up): on the
// GPU the backward as one group of lora.cu's kernels, whose results are each branch's own call's
// bit for bit (an expansion adds the branches to the input gradient in their order), and the CPU's
// within one op's bound. Groups of 1, 2 and 3; ranks 1, 4 and 8 grouped, 12 (above
// kLoraGroupMaxRank) one by one; outputs as column blocks of one wide row (the fused q/k/v layout);
// dropout off and on, each branch with its own key; row counts with ragged tails.
TEST_F(CudaBackend, LoraBranchesSharingTheirInputEqualEachBranchAlone) {
  const Index in = 64, pad = 3, ld_in = in + pad;
  const Index widths[3] = {64, 24, 40}, ld_out = 64 + 24 + 40 + pad;
  const Index first_column[3] = {0, 64, 88};
  for (const auto& [M, rank] :
       std::vector<std::pair<Index, Index>>{{37, 4}, {603, 8}, {600, 1}, {42, 12}}) {
    auto x = random_values(M * ld_in, 20), y = random_values(M * ld_out, 21);
    auto dy = random_values(M * ld_out, 22), dx = random_values(M * ld_in, 23);
    std::vector<std::vector<float>> a, b;
    for (int m = 0; m < 3; ++m) {
      a.push_back(random_values(rank * in, 30 + m, 0.3f));
      b.push_back(random_values(widths[m] * rank, 40 + m, 0.3f));
    }
    std::vector<std::uint64_t> row_keys(M);
    for (Index i = 0; i < M; ++i) row_keys[i] = mix64(static_cast<std::uint64_t>(i) + 7);
    const std::uint64_t* g_row_keys = on_gpu(row_keys);
    const float *gx = on_gpu(x), *gdy = on_gpu(dy);
    for (int count = 1; count <= 3; ++count) {
      for (double p : {0.0, 0.1}) {
        SCOPED_TRACE("M=" + std::to_string(M) + " rank=" + std::to_string(rank) +
                     " branches=" + std::to_string(count) + " p=" + std::to_string(p));
        // Per way (0: the group on the GPU, 1: each branch alone on the GPU, 2: the CPU): the
        // outputs, z, dA, dB and the input gradient.
        std::vector<float> out[3], zs[3][3], da[3][3], db[3][3], din[3];
        for (int way = 0; way < 3; ++way) {
          const bool cpu = way == 2;
          Kernels<Fp32Policy>& k = cpu ? *cpu_kernels_ : *gpu_kernels_;
          std::vector<float> ya = y, dxa = dx;
          std::vector<std::vector<float>> z(count), dav(count), dbv(count);
          float* gya = on_gpu(ya);
          float* gdxa = on_gpu(dxa);
          std::vector<float*> gz, gda, gdb;
          Kernels<Fp32Policy>::LoraForwardBranch fwd[3];
          Kernels<Fp32Policy>::LoraBackwardBranch bwd[3];
          for (int m = 0; m < count; ++m) {
            z[m].assign(M * rank, 0.0f);
            dav[m].assign(rank * in, 0.5f);
            dbv[m].assign(widths[m] * rank, -0.25f);
            gz.push_back(on_gpu(z[m]));
            gda.push_back(on_gpu(dav[m]));
            gdb.push_back(on_gpu(dbv[m]));
            const DropoutMask mask{p, 1000u + static_cast<std::uint64_t>(m),
                                   cpu ? row_keys.data() : g_row_keys};
            const float* am = cpu ? a[m].data() : on_gpu(a[m]);
            const float* bm = cpu ? b[m].data() : on_gpu(b[m]);
            float* zm = cpu ? z[m].data() : gz[m];
            fwd[m] = {
                Mat<float>{(cpu ? ya.data() : gya) + first_column[m], M, widths[m], ld_out, 1}, zm,
                am, bm, mask};
            bwd[m] = {cpu ? dav[m].data() : gda[m],
                      cpu ? dbv[m].data() : gdb[m],
                      Mat<const float>{(cpu ? dy.data() : gdy) + first_column[m], M, widths[m],
                                       ld_out, 1},
                      zm,
                      am,
                      bm,
                      mask};
          }
          const Mat<const float> src{cpu ? x.data() : gx, M, in, ld_in, 1};
          const Mat<float> diff_src{cpu ? dxa.data() : gdxa, M, in, ld_in, 1};
          if (way == 1) {
            for (int m = 0; m < count; ++m) {
              k.lora_forward(fwd[m].dst, fwd[m].z, src, fwd[m].a, fwd[m].b, rank, 4.0,
                             fwd[m].dropout);
              k.lora_backward(diff_src, bwd[m].diff_a, bwd[m].diff_b, bwd[m].diff_dst, bwd[m].z,
                              src, bwd[m].a, bwd[m].b, rank, 4.0, bwd[m].dropout);
            }
          } else {
            // The profiler counts each outermost LoRA call: on the GPU the forward's one a
            // branch (cuda/lora.cu: one by one, measured faster than grouped), the backward's one
            // for the group where its rank allows, so that the test cannot pass by the
            // backward's branches running one by one.
            Profiler& profiler = (cpu ? cpu_ : *gpu_).profiler();
            profiler.enable(true);
            profiler.reset();
            k.lora_forward_shared({fwd, static_cast<std::size_t>(count)}, src, rank, 4.0);
            k.lora_backward_shared(diff_src, {bwd, static_cast<std::size_t>(count)}, src, rank,
                                   4.0);
            if (!cpu) {
              EXPECT_EQ(profiler.calls(ProfileCategory::kLora),
                        count + (rank <= kLoraGroupMaxRank ? 1 : count))
                  << "LoRA calls on the GPU";
            }
            profiler.enable(false);
          }
          out[way] = cpu ? ya : to_host(gya, ya.size());
          din[way] = cpu ? dxa : to_host(gdxa, dxa.size());
          for (int m = 0; m < count; ++m) {
            zs[way][m] = cpu ? z[m] : to_host(gz[m], z[m].size());
            da[way][m] = cpu ? dav[m] : to_host(gda[m], dav[m].size());
            db[way][m] = cpu ? dbv[m] : to_host(gdb[m], dbv[m].size());
          }
        }
        EXPECT_EQ(out[0], out[1]) << "outputs";
        EXPECT_EQ(din[0], din[1]) << "input gradient";
        expect_close(out[0], out[2], "outputs against the CPU");
        expect_close(din[0], din[2], "input gradient against the CPU");
        for (int m = 0; m < count; ++m) {
          SCOPED_TRACE("branch " + std::to_string(m));
          EXPECT_EQ(zs[0][m], zs[1][m]) << "z";
          EXPECT_EQ(da[0][m], da[1][m]) << "dA";
          EXPECT_EQ(db[0][m], db[1][m]) << "dB";
          expect_close(zs[0][m], zs[2][m], "z against the CPU");
          expect_close(da[0][m], da[2][m], "dA against the CPU");
          expect_close(db[0][m], db[2][m], "dB against the CPU");
        }
      }
    }
  }
}

// The backward's one pass over x and dx (lora.cu lora_outer_expand: dA_b += scale dz_b^T
// drop_b(x) and dx += drop_b(scale dz_b A_b), each element's mask drawn once a branch) against
// lora_outer and then lora_expand, branch by branch: the same bits. Three branches at ranks 4 and
// 8 (kLoraGroupMaxRank), two at 1 and 8, one at ranks 4, 5, 12 and 16 (each rank bound); W laid
// out as A (a row a rank, loaded a value at a time) and as B (a row a column, loaded four at a
// time where the rank allows); columns over two blocks, the second ragged; row counts with a
// ragged last chunk and a ragged tail of the rows in flight; x and dx with their own row
// strides; dropout off and on. A dx that overlaps x by one value is refused; one right after it
// runs.
TEST_F(CudaBackend, LoraOuterExpandEqualsOuterThenExpandBranchByBranch) {
  auto& gpu_device = dynamic_cast<cuda::CudaDevice&>(device());
  const cudaStream_t stream = gpu_device.stream();
  const Index n = 300, big_rs = n + 3, diff_rs = n + 5;
  struct Case {
    Index rows, rank;
    int count;
  };
  for (const Case& c : std::vector<Case>{{37, 4, 3},
                                         {603, 8, 3},
                                         {600, 8, 2},
                                         {600, 1, 2},
                                         {37, 4, 1},
                                         {603, 5, 1},
                                         {45, 12, 1},
                                         {45, 16, 1}}) {
    const Index M = c.rows, rank = c.rank;
    const auto x = random_values(M * big_rs, 50), dx = random_values(M * diff_rs, 51);
    std::vector<std::uint64_t> row_keys(M);
    for (Index i = 0; i < M; ++i) row_keys[i] = mix64(static_cast<std::uint64_t>(i) + 9);
    const std::uint64_t* g_row_keys = on_gpu(row_keys);
    std::vector<std::vector<float>> dz, w;
    for (int b = 0; b < c.count; ++b) {
      dz.push_back(random_values(M * rank, 60 + b));
      w.push_back(random_values(rank * n, 70 + b, 0.3f));
    }
    float* partial = on_gpu(
        std::vector<float>(static_cast<std::size_t>(cuda::lora_outer_scratch(M, n, rank, 3))));
    // W(k, j) at w[k wk + j wj]: A's layout [r, n], then B's [n, r].
    for (const auto& [wk, wj] : {std::pair<Index, Index>{n, 1}, {1, rank}}) {
      for (double p : {0.0, 0.1}) {
        SCOPED_TRACE("M=" + std::to_string(M) + " rank=" + std::to_string(rank) +
                     " branches=" + std::to_string(c.count) + " wk=" + std::to_string(wk) +
                     " p=" + std::to_string(p));
        // Per way (0: one pass, 1: branch by branch): each dA and dx.
        std::vector<float> da[2][3], din[2];
        for (int way = 0; way < 2; ++way) {
          const std::vector<float> da_before(static_cast<std::size_t>(rank * n), 0.5f);
          float* gdx = on_gpu(dx);
          cuda::LoraBranches group;
          std::vector<float*> gda;
          for (int b = 0; b < c.count; ++b) {
            gda.push_back(on_gpu(da_before));
            group.small[b] = on_gpu(dz[b]);
            group.w[b] = on_gpu(w[b]);
            group.out[b] = gda[b];
            group.key[b] = 2000u + static_cast<std::uint64_t>(b);
            ++group.count;
          }
          if (way == 0) {
            cuda::lora_outer_expand(stream, group, n, 1, on_gpu(x), big_rs, gdx, diff_rs, wk, wj, M,
                                    n, static_cast<int>(rank), 0.75f, p, g_row_keys, partial);
          } else {
            for (int b = 0; b < c.count; ++b) {
              cuda::LoraBranches one;
              one.count = 1;
              one.small[0] = group.small[b];
              one.w[0] = group.w[b];
              one.out[0] = group.out[b];
              one.key[0] = group.key[b];
              cuda::lora_outer(stream, one, n, 1, on_gpu(x), big_rs, M, n, static_cast<int>(rank),
                               0.75f, p, g_row_keys, partial);
              cuda::lora_expand(stream, gdx, diff_rs, one, wk, wj, M, n, static_cast<int>(rank),
                                0.75f, p, g_row_keys);
            }
          }
          din[way] = to_host(gdx, dx.size());
          for (int b = 0; b < c.count; ++b) da[way][b] = to_host(gda[b], da_before.size());
        }
        EXPECT_EQ(din[0], din[1]) << "dx";
        EXPECT_NE(din[0], dx) << "dx unchanged";
        for (int b = 0; b < c.count; ++b) {
          EXPECT_EQ(da[0][b], da[1][b]) << "dA of branch " << b;
          EXPECT_NE(da[0][b], std::vector<float>(da[0][b].size(), 0.5f)) << "dA unchanged";
        }
      }
    }
  }
  // dx overlapping x (4 rows of n, dense) by its last value: refused before anything is
  // launched; dx right after x: run.
  float* gx = on_gpu(random_values(8 * n, 80));
  cuda::LoraBranches one;
  one.count = 1;
  one.small[0] = on_gpu(random_values(4 * 4, 81));
  one.w[0] = on_gpu(random_values(4 * n, 82));
  one.out[0] = on_gpu(std::vector<float>(4 * n));
  float* partial = on_gpu(std::vector<float>(static_cast<std::size_t>(4 * n)));
  const auto outer_expand_into = [&](float* gdx) {
    cuda::lora_outer_expand(stream, one, n, 1, gx, n, gdx, n, n, 1, 4, n, 4, 1.0f, 0.0, nullptr,
                            partial);
  };
  try {
    outer_expand_into(gx + 4 * n - 1);
    ADD_FAILURE() << "an overlapping dx was not refused";
  } catch (const DeviceError& e) {
    EXPECT_NE(std::string(e.what()).find("the input and its gradient overlap"), std::string::npos)
        << e.what();
  }
  EXPECT_NO_THROW(outer_expand_into(gx + 4 * n));
}

}  // namespace
}  // namespace zerolora
