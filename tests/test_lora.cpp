// LoRA configuration, parameter layout (PEFT names, shapes), initialisation, dropout masks, and
// the ZeRO-3 partition of the LoRA tensors.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "lora/lora_layout.hpp"
#include "ops/lora_branch.hpp"
#include "zero3/lora_shards.hpp"

namespace zerolora {
namespace {

LlamaConfig small_gqa() {
  LlamaConfig c;
  c.hidden_size = 48;
  c.intermediate_size = 80;
  c.num_layers = 3;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;  // q_dim 64 != hidden
  c.vocab_size = 100;
  return c;
}

TEST(LoraConfig, TargetsAndScale) {
  EXPECT_EQ(parse_lora_targets("v_proj, q_proj,q_proj"),
            (std::vector<LoraModule>{LoraModule::kQ, LoraModule::kV}));
  EXPECT_EQ(parse_lora_targets("all-linear").size(), 7u);
  EXPECT_THROW(parse_lora_targets("q_proj,qkv"), ConfigError);
  LoraConfig c;
  c.rank = 4;
  c.alpha = 16;
  EXPECT_DOUBLE_EQ(c.scale(), 4.0);
  c.use_rslora = true;
  EXPECT_DOUBLE_EQ(c.scale(), 8.0);
  c.dropout = 1.0;
  EXPECT_THROW(c.validate(), ConfigError);
  c.dropout = 0.0;
  c.rank = 0;
  EXPECT_THROW(c.validate(), ConfigError);
}

TEST(LoraLayout, PeftNamesShapesAndContiguousOffsets) {
  LoraConfig lora;
  lora.rank = 4;
  lora.targets = parse_lora_targets("q_proj,k_proj,o_proj,down_proj");
  const LoraLayout layout(small_gqa(), lora);
  ASSERT_EQ(layout.entries().size(), 3u * 4u * 2u);
  Index offset = 0;
  for (const auto& e : layout.entries()) {
    EXPECT_EQ(e.offset, offset) << e.name;
    offset += e.numel();
  }
  EXPECT_EQ(offset, layout.size());
  const auto* q = layout.find("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->rows, 4);
  EXPECT_EQ(q->cols, 48);
  const auto* kb = layout.find("base_model.model.model.layers.2.self_attn.k_proj.lora_B.weight");
  ASSERT_NE(kb, nullptr);
  EXPECT_EQ(kb->rows, 32);  // kv_dim
  EXPECT_EQ(kb->cols, 4);
  const auto* down = layout.find("base_model.model.model.layers.0.mlp.down_proj.lora_A.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(down->cols, 80);
  const auto* o = layout.adapter(0, LoraModule::kO);
  ASSERT_NE(o, nullptr);
  EXPECT_EQ(o->in, 64);
  EXPECT_EQ(o->out, 48);
  EXPECT_EQ(layout.adapter(0, LoraModule::kV), nullptr);
}

TEST(LoraInit, KaimingUniformAndGaussianAsPeft) {
  LoraConfig lora;
  lora.rank = 8;
  const LlamaConfig model = small_gqa();
  const LoraLayout layout(model, lora);
  std::vector<double> p(static_cast<std::size_t>(layout.size()));
  init_lora_params<double>(p, layout, 1);
  for (const auto& e : layout.entries()) {
    const double* v = p.data() + e.offset;
    if (e.is_b) {
      for (Index i = 0; i < e.numel(); ++i) ASSERT_EQ(v[i], 0.0) << e.name;
      continue;
    }
    const double bound = 1.0 / std::sqrt(static_cast<double>(e.cols));
    double lo = 1, hi = -1;
    for (Index i = 0; i < e.numel(); ++i) {
      lo = std::min(lo, v[i]);
      hi = std::max(hi, v[i]);
    }
    EXPECT_GE(lo, -bound) << e.name;
    EXPECT_LE(hi, bound) << e.name;
    EXPECT_LT(lo, -0.8 * bound) << e.name;  // spans the interval
    EXPECT_GT(hi, 0.8 * bound) << e.name;
  }
  std::vector<double> again(p.size()), other(p.size());
  init_lora_params<double>(again, layout, 1);
  init_lora_params<double>(other, layout, 2);
  EXPECT_EQ(p, again);
  EXPECT_NE(p, other);

  lora.init = LoraInit::kGaussian;
  const LoraLayout gaussian(model, lora);
  init_lora_params<double>(p, gaussian, 3);
  double sum2 = 0;
  Index n = 0;
  for (const auto& e : gaussian.entries())
    if (!e.is_b)
      for (Index i = 0; i < e.numel(); ++i, ++n) sum2 += p[e.offset + i] * p[e.offset + i];
  EXPECT_NEAR(std::sqrt(sum2 / n), 1.0 / 8, 0.01);
}

TEST(Dropout, RateDeterminismAndIndependenceFromRowSplit) {
  Runtime rt(2);
  const Index M = 64, D = 512;
  std::vector<float> x(M * D, 1.0f), y(M * D), y2(M * D);
  std::vector<std::uint64_t> keys(M);
  for (Index i = 0; i < M; ++i) keys[i] = mix64(1000 + i);
  const DropoutMask mask{0.25, 77, keys.data()};
  apply_dropout(rt, Mat<float>::dense(y.data(), M, D), Mat<const float>::dense(x.data(), M, D),
                mask, false);
  const auto dropped = std::count(y.begin(), y.end(), 0.0f);
  EXPECT_NEAR(static_cast<double>(dropped) / (M * D), 0.25, 0.01);
  for (float v : y) ASSERT_TRUE(v == 0.0f || v == 1.0f / 0.75f);
  // Rows 32..63 processed on their own get the same mask: keys, not positions in the call.
  const DropoutMask tail{0.25, 77, keys.data() + 32};
  apply_dropout(rt, Mat<float>::dense(y2.data(), 32, D), Mat<const float>::dense(x.data(), 32, D),
                tail, false);
  EXPECT_TRUE(std::equal(y2.begin(), y2.begin() + 32 * D, y.begin() + 32 * D));
  const DropoutMask other_step{0.25, 78, keys.data()};
  apply_dropout(rt, Mat<float>::dense(y2.data(), M, D), Mat<const float>::dense(x.data(), M, D),
                other_step, false);
  EXPECT_NE(y, y2);
}

// Every element of the layout lands in exactly one place (the replicated vector or one rank's
// shard), shards are the per-layer padded sizes, and the round trip gives the vector back.
TEST(LoraPartition, ShardsCoverTheLayoutOnceAndRoundTrip) {
  LoraConfig lora;
  lora.rank = 3;
  lora.targets = parse_lora_targets("all-linear");
  const LoraLayout layout(small_gqa(), lora);
  std::vector<float> whole(static_cast<std::size_t>(layout.size()));
  std::iota(whole.begin(), whole.end(), 1.0f);  // distinct, non-zero
  for (const Index threshold : {Index{0}, Index{200}, Index{1} << 40})
    for (const int world : {1, 2, 3, 5}) {
      SCOPED_TRACE("threshold " + std::to_string(threshold) + ", W " + std::to_string(world));
      const LoraPartition plan(layout, threshold, world);
      Index expected_replicated = 0, expected_shard = 0;
      for (int l = 0; l < small_gqa().num_layers; ++l) {
        Index partitioned = 0;
        for (const auto& e : layout.entries())
          if (e.layer == l)
            (e.numel() >= threshold ? partitioned : expected_replicated) += e.numel();
        expected_shard += (partitioned + world - 1) / world;
      }
      EXPECT_EQ(plan.replicated, expected_replicated);
      EXPECT_EQ(plan.shard, expected_shard);
      EXPECT_EQ(plan.replicated + plan.partitioned, layout.size());

      std::vector<float> replicated(static_cast<std::size_t>(plan.replicated));
      plan.pack_replicated(whole.data(), replicated.data());
      std::vector<std::vector<float>> shards;
      std::vector<const float*> pointers;
      std::vector<int> seen(whole.size() + 1, 0);
      for (float v : replicated) ++seen[static_cast<std::size_t>(v)];
      for (int r = 0; r < world; ++r) {
        shards.emplace_back(static_cast<std::size_t>(plan.shard), -1.0f);
        plan.shard_of(whole.data(), r, shards.back().data());
        for (float v : shards.back())
          if (v > 0) ++seen[static_cast<std::size_t>(v)];
      }
      for (const auto& sh : shards) pointers.push_back(sh.data());
      for (std::size_t i = 1; i < seen.size(); ++i) ASSERT_EQ(seen[i], 1) << "element " << i - 1;
      std::vector<float> back(whole.size(), 0.0f);
      plan.unpack_replicated(replicated.data(), back.data());
      plan.unshard(pointers, back.data());
      EXPECT_EQ(back, whole);
    }
}

}  // namespace
}  // namespace zerolora
