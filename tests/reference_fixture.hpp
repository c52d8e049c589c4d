// The Transformers + PEFT fixtures (tools/make_fixtures.py, tools/make_bf16_fixtures.py) and
// the check of one case against them: logits, loss, every LoRA gradient, and 3 training steps
// through LoraTrainer (micro-batches, clipping that fires, AdamW). Shared by the CPU tests
// (test_reference_fixtures.cpp) and the GPU's (test_cuda_model.cpp), which run the same cases on
// their runtime's device.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <ostream>
#include <string>
#include <vector>

#include "comm/communicator.hpp"
#include "core/precision.hpp"
#include "data/examples.hpp"
#include "io/checkpoint.hpp"
#include "io/tensor_read.hpp"
#include "model/generate.hpp"
#include "model/llama_model.hpp"
#include "test_util.hpp"
#include "tolerances.hpp"
#include "train/lora_trainer.hpp"
#include "zero3/whole_model.hpp"

namespace zerolora::testing {

struct Reference {
  // reference.safetensors: Transformers + PEFT in fp32 (tools/make_fixtures.py);
  // reference_bf16[_residual].safetensors: the same computation rounded to bf16 where the
  // engine's bf16 mode rounds (tools/make_bf16_fixtures.py).
  explicit Reference(const std::filesystem::path& dir,
                     const std::string& name = "reference.safetensors")
      : file(dir / name), checkpoint(dir / "model") {}

  std::vector<float> floats(const std::string& name) const {
    return read_float_tensor<float>(file, file.at(name));
  }
  std::vector<std::int64_t> ints(const std::string& name) const {
    return read_int_tensor(file, file.at(name));
  }
  std::string meta(const std::string& key) const { return file.metadata().at(key); }

  LoraConfig lora_config() const {
    LoraConfig lora;
    lora.rank = std::stoi(meta("lora_rank"));
    lora.alpha = std::stod(meta("lora_alpha"));
    lora.use_rslora = meta("use_rslora") == "true";
    lora.targets = parse_lora_targets(meta("target_modules"));
    lora.dropout = 0.0;
    return lora;
  }

  // Every tensor the reference recorded under `prefix`, counted: a layout that silently
  // dropped a target would compare fewer tensors and pass.
  std::size_t count_tensors(const std::string& prefix) const {
    std::size_t n = 0;
    for (const auto& t : file.tensors()) n += t.name.rfind(prefix, 0) == 0;
    return n;
  }

  // The batch rows as training sequences, each as long as its attention mask.
  std::vector<TokenSequence> sequences() const {
    const auto& ids_info = file.at("input_ids");
    const Index B = ids_info.shape[0], T = ids_info.shape[1];
    const auto ids = ints("input_ids"), mask = ints("attention_mask"), labels = ints("labels");
    std::vector<TokenSequence> rows(static_cast<std::size_t>(B));
    for (Index b = 0; b < B; ++b) {
      TokenSequence& row = rows[static_cast<std::size_t>(b)];
      for (Index t = 0; t < T && mask[b * T + t]; ++t) {
        row.input_ids.push_back(static_cast<std::int32_t>(ids[b * T + t]));
        row.labels.push_back(static_cast<std::int32_t>(labels[b * T + t]));
      }
      row.segment_lengths = {static_cast<std::int32_t>(row.input_ids.size())};
    }
    return rows;
  }

  // One segment per row.
  Batch batch() const {
    Batch batch;
    const auto rows = sequences();
    for (std::size_t b = 0; b < rows.size(); ++b)
      batch.add_sequence(rows[b].input_ids, rows[b].labels, static_cast<std::int64_t>(b));
    return batch;
  }

  SafetensorsFile file;
  Checkpoint checkpoint;
};

struct Case {
  std::string name;
  Precision precision;
  Recompute recompute;
  bool bf16_residual = false;
};

// "qwen2_bias_bf16_recompute_bf16_residual": the test's name suffix, and how gtest (so ctest's
// list) prints the case instead of its bytes.
inline std::string case_label(const Case& c) {
  return c.name + (c.precision == Precision::kFp32 ? "_fp32" : "_bf16") +
         (c.recompute == Recompute::kFull           ? "_recompute"
          : c.recompute == Recompute::kAttention    ? "_attention"
          : c.recompute == Recompute::kAttentionMlp ? "_attention_mlp"
          : c.recompute == Recompute::kSelective    ? "_selective"
                                                    : "_stored") +
         (c.bf16_residual ? "_bf16_residual" : "");
}
inline std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return case_label(info.param);
}
inline void PrintTo(const Case& c, std::ostream* out) {
  *out << case_label(c);
}

// Checks one measured error against its tolerance (< 0: not compared); with
// ZEROLORA_PRINT_MEASURED set, prints it too, for keeping tests/tolerances.hpp's "measured"
// figures true (ctest -R Fixtures --verbose | grep measured).
inline void within(const Case& c, const std::string& what, double measured, double tolerance) {
  if (std::getenv("ZEROLORA_PRINT_MEASURED"))
    std::printf("measured %s%s%s %s: %.3g (tolerance %.3g)\n", c.name.c_str(),
                c.precision == Precision::kFp32 ? " fp32" : " bf16",
                c.bf16_residual ? " bf16_residual" : "", what.c_str(), measured, tolerance);
  if (tolerance >= 0) {
    EXPECT_LT(measured, tolerance) << what;
  }
}

// On `rt`'s device: the host's, or a GPU's (tests/test_cuda_model.cpp runs the same cases there).
// fused_attention false: on a GPU, the reference attention kernel instead of cuDNN's.
template <class P>
void check_against_reference(Runtime& rt, const Case& c, const tolerance::Fixture& tol,
                             bool fused_attention = true) {
  // The bf16 mode against the reference that rounds where it does.
  const Reference ref(testing::fixtures_dir() / c.name,
                      c.precision == Precision::kFp32 ? "reference.safetensors"
                      : c.bf16_residual               ? "reference_bf16_residual.safetensors"
                                                      : "reference_bf16.safetensors");
  auto weights = load_whole_model<typename P::Weight>(rt, ref.checkpoint);
  const LoraLayout layout(ref.checkpoint.config(), ref.lora_config());
  ComputeOptions options;
  options.recompute = c.recompute;
  options.bf16_residual = c.bf16_residual;
  options.attention.block = 4;  // several query tiles per segment
  options.attention.fused = fused_attention;
  options.mlp_chunk_rows = 7;  // several MLP chunks, one ragged
  options.head_chunk_rows = 5;
  LlamaModel<P> model(rt, *weights, &layout, options);

  std::vector<float> params(static_cast<std::size_t>(layout.size()));
  for (const auto& e : layout.entries()) {
    const auto values = ref.floats("lora." + e.name);
    ASSERT_EQ(static_cast<Index>(values.size()), e.numel()) << e.name;
    std::copy(values.begin(), values.end(), params.begin() + e.offset);
  }
  const auto entries = layout.entries().size();
  ASSERT_EQ(ref.count_tensors("lora."), entries);
  ASSERT_EQ(ref.count_tensors("grad."), entries);
  ASSERT_EQ(ref.count_tensors("step3."), entries);
  const Batch batch = ref.batch();
  const Index V = ref.checkpoint.config().vocab_size;

  // Logits of every real (unpadded) position.
  std::vector<float> logits(static_cast<std::size_t>(batch.size() * V));
  model.forward_logits(batch, params, logits.data());
  const auto ref_logits = ref.floats("logits");
  const Index T = ref.file.at("input_ids").shape[1];
  std::vector<float> expected_logits;
  for (std::size_t b = 0; b < batch.segments.size(); ++b)
    for (Index t = 0; t < batch.segments[b].length; ++t)
      expected_logits.insert(expected_logits.end(), ref_logits.begin() + (b * T + t) * V,
                             ref_logits.begin() + (b * T + t + 1) * V);
  within(c, "logits", testing::max_rel_error(logits, expected_logits), tol.logits);
  within(c, "logits mean", testing::mean_rel_error(logits, expected_logits), tol.logits_mean);

  // Loss and gradients.
  const double count = static_cast<double>(batch.label_count());
  std::vector<float> grads(params.size(), 0.0f);
  const double loss = model.forward_backward(batch, params, grads, 1.0 / count, {}) / count;
  const double ref_loss = ref.floats("loss")[0];
  within(c, "loss", std::abs(loss - ref_loss) / std::abs(ref_loss), tol.loss);
  for (const auto& e : layout.entries()) {
    const auto expected = ref.floats("grad." + e.name);
    const std::span<const float> ours(grads.data() + e.offset, static_cast<std::size_t>(e.numel()));
    within(c, "grad " + e.name, testing::max_rel_error(ours, std::span<const float>(expected)),
           tol.grad);
  }

  // Three training steps through the trainer itself, as `zerolora train` makes them: one
  // sequence per micro-batch (the reference ran the whole batch at once), each scaled by the
  // global batch's label count, clipping by the global norm (it fires: the fixtures' norms
  // are 3-40x max_grad_norm), AdamW. The reference is torch + PEFT's equivalent loop.
  TrainerOptions training;
  training.micro_batch = 1;
  training.adamw.beta1 = std::stod(ref.meta("beta1"));
  training.adamw.beta2 = std::stod(ref.meta("beta2"));
  training.adamw.eps = std::stod(ref.meta("eps"));
  training.adamw.weight_decay = std::stod(ref.meta("weight_decay"));
  training.max_grad_norm = std::stod(ref.meta("max_grad_norm"));
  const double lr = std::stod(ref.meta("lr"));
  auto comm = make_local_communicator();
  LoraTrainer<P> trainer(rt, *comm, model, layout, training, params);
  const std::vector<TokenSequence> sequences = ref.sequences();
  std::vector<Index> all(sequences.size());
  std::iota(all.begin(), all.end(), Index{0});
  const Index targets = count_targets(sequences, all);
  ASSERT_EQ(targets, batch.label_count());
  const auto ref_losses = ref.floats("losses"), ref_norms = ref.floats("grad_norms");
  for (std::size_t step = 0; step < ref_losses.size(); ++step) {
    const StepStats stats =
        trainer.step(sequences, all, targets, lr, static_cast<std::int64_t>(step));
    EXPECT_TRUE(stats.finite);
    const std::string at = "step " + std::to_string(step);
    within(c, at + " loss", std::abs(stats.loss - ref_losses[step]) / ref_losses[step],
           step == 0 ? tol.loss : tol.later_losses);
    EXPECT_GT(ref_norms[step], 2 * training.max_grad_norm) << "clipping must fire";
    within(c, at + " grad norm", std::abs(stats.grad_norm - ref_norms[step]) / ref_norms[step],
           step == 0 ? tol.grad : tol.later_norms);
  }
  params = trainer.gather_params();
  const double steps = static_cast<double>(ref_losses.size());
  for (const auto& e : layout.entries()) {
    const auto expected = ref.floats("step3." + e.name);
    const auto initial = ref.floats("lora." + e.name);
    const std::span<const float> ours(params.data() + e.offset,
                                      static_cast<std::size_t>(e.numel()));
    within(c, "after 3 steps " + e.name,
           testing::max_rel_error(ours, std::span<const float>(expected)), tol.weights);
    double update_error = 0;
    for (std::size_t i = 0; i < expected.size(); ++i)
      update_error += std::abs((ours[i] - initial[i]) - (expected[i] - initial[i]));
    update_error /= static_cast<double>(expected.size()) * lr * steps;
    within(c, "mean update error " + e.name, update_error, tol.update);
  }
}

// The cases run with the model in a device's memory (a GPU's; on the CPU, a device the host
// cannot address): every fixture in fp32 with recompute on and off, and in bf16 as `zerolora
// train --bf16` runs it (full recompute, bf16 residual).
inline std::vector<Case> device_fixture_cases() {
  std::vector<Case> cases;
  for (const char* name : {"gqa_tied", "odd_untied_all", "llama3_rope", "linear_rope", "qwen2_bias",
                           "mistral_window"}) {
    cases.push_back({name, Precision::kFp32, Recompute::kFull});
    cases.push_back({name, Precision::kFp32, Recompute::kNone});
    cases.push_back({name, Precision::kBf16, Recompute::kFull, true});
  }
  return cases;
}

// demo/stories260K-hf, a real pretrained model, against Transformers on `rt`'s device: the
// greedy continuation of "Once upon a time" token for token, and the prompt's logits.
template <class P>
void check_stories_greedy_and_logits(Runtime& rt, double logits_tol) {
  const SafetensorsFile ref(fixtures_dir() / "stories260k" / "reference.safetensors");
  auto ints = [&](const std::string& name) {
    const auto v = read_int_tensor(ref, ref.at(name));
    return std::vector<std::int32_t>(v.begin(), v.end());
  };
  const auto prompt = ints("prompt_ids"), greedy = ints("greedy_ids");
  Checkpoint checkpoint(stories_model_dir());
  auto weights = load_whole_model<typename P::Weight>(rt, checkpoint);
  LlamaModel<P> model(rt, *weights, nullptr);
  const auto& eos = checkpoint.config().eos_token_ids;
  const auto generated =
      generate(model, prompt, static_cast<int>(greedy.size() - prompt.size()), eos);
  EXPECT_EQ(generated, greedy);

  Batch batch;
  batch.add_sequence(prompt, std::vector<std::int32_t>(prompt.size(), kIgnoreIndex), 0);
  const auto vocab = static_cast<std::size_t>(checkpoint.config().vocab_size);
  std::vector<float> logits(prompt.size() * vocab);
  model.forward_logits(batch, {}, logits.data());
  const auto expected = read_float_tensor<float>(ref, ref.at("prompt_logits"));
  EXPECT_LT(max_rel_error(logits, expected), logits_tol);
}

}  // namespace zerolora::testing
