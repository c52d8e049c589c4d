// config.json parsing: HF defaults, GQA, both rope forms (rope_scaling and rope_parameters),
// and clear refusals of what is not supported.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "io/llama_config.hpp"
#include "ops/rope.hpp"
#include "test_util.hpp"

namespace zerolora {
namespace {

using json = nlohmann::json;

json llama_json() {
  return json{{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"hidden_size", 64},
              {"intermediate_size", 172},
              {"num_hidden_layers", 5},
              {"num_attention_heads", 8},
              {"vocab_size", 512}};
}

template <class E>
void expect_error(const json& j, const std::string& fragment) {
  try {
    LlamaConfig::from_json(j, "cfg.json");
    FAIL() << "accepted: " << j.dump();
  } catch (const E& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("cfg.json"), std::string::npos) << message;
    EXPECT_NE(message.find(fragment), std::string::npos) << message;
  } catch (const std::exception& e) {
    FAIL() << "wrong error type: " << e.what();
  }
}

TEST(LlamaConfig, DefaultsAsTransformers) {
  const auto c = LlamaConfig::from_json(llama_json(), "cfg.json");
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope.theta, 10000.0);
  EXPECT_EQ(c.rope.type, RopeParams::Type::kDefault);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_EQ(c.eos_token_ids, std::vector<std::int64_t>{2});
}

TEST(LlamaConfig, RealStories260K) {
  const auto c = LlamaConfig::load(testing::stories_model_dir() / "config.json");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
}

TEST(LlamaConfig, RopeScalingOldAndNewForms) {
  auto j = llama_json();
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  auto c = LlamaConfig::from_json(j, "cfg.json");
  EXPECT_EQ(c.rope.type, RopeParams::Type::kLlama3);
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.rope.original_max_position_embeddings, 8192);

  j = llama_json();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};  // the oldest spelling
  c = LlamaConfig::from_json(j, "cfg.json");
  EXPECT_EQ(c.rope.type, RopeParams::Type::kLinear);
  EXPECT_DOUBLE_EQ(c.rope.factor, 4.0);

  j = llama_json();  // transformers 5: theta lives inside rope_parameters
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e6}};
  c = LlamaConfig::from_json(j, "cfg.json");
  EXPECT_EQ(c.rope.type, RopeParams::Type::kDefault);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1e6);

  j = llama_json();
  j["rope_parameters"] = {{"rope_type", "llama3"},
                          {"factor", 8.0},
                          {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0}};  // original_max defaults to max positions
  j["max_position_embeddings"] = 4096;
  c = LlamaConfig::from_json(j, "cfg.json");
  EXPECT_EQ(c.rope.original_max_position_embeddings, 4096);
}

TEST(LlamaConfig, RefusesWhatIsNotSupported) {
  auto j = llama_json();
  j["model_type"] = "gemma";
  j["architectures"] = {"GemmaForCausalLM"};
  expect_error<UnsupportedError>(j, "supports Llama-family");
  j = llama_json();
  j["model_type"] = "qwen2";  // architectures still says Llama
  expect_error<ConfigError>(j, "disagree");
  j = llama_json();
  j["model_type"] = "qwen2";
  j["architectures"] = {"Qwen2ForCausalLM"};
  j["use_sliding_window"] = true;
  expect_error<UnsupportedError>(j, "use_sliding_window");
  j = llama_json();
  j.erase("model_type");
  j["architectures"] = {"GPT2LMHeadModel"};
  expect_error<UnsupportedError>(j, "GPT2LMHeadModel");
  j = llama_json();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  expect_error<UnsupportedError>(j, "supported: default, linear, llama3");
  j = llama_json();
  j["attention_bias"] = true;
  expect_error<UnsupportedError>(j, "attention_bias");
  j = llama_json();
  j["mlp_bias"] = true;
  expect_error<UnsupportedError>(j, "mlp_bias");
  j = llama_json();
  j["hidden_act"] = "gelu";
  expect_error<UnsupportedError>(j, "gelu");
  j = llama_json();
  j["quantization_config"] = {{"quant_method", "bitsandbytes"}};
  expect_error<UnsupportedError>(j, "quantiz");
}

TEST(LlamaConfig, QwenAndMistralFamilies) {
  auto j = llama_json();
  j["model_type"] = "qwen2";
  j["architectures"] = {"Qwen2ForCausalLM"};
  const auto qwen = LlamaConfig::from_json(j, "cfg.json");
  EXPECT_EQ(qwen.model_type, "qwen2");
  EXPECT_TRUE(qwen.qkv_bias);
  EXPECT_EQ(qwen.sliding_window, 0);
  j["model_type"] = "mistral";
  j["architectures"] = {"MistralForCausalLM"};
  j["sliding_window"] = nullptr;  // v0.2 and later: none
  EXPECT_EQ(LlamaConfig::from_json(j, "cfg.json").sliding_window, 0);
  j["sliding_window"] = 4096;  // v0.1
  const auto mistral = LlamaConfig::from_json(j, "cfg.json");
  EXPECT_FALSE(mistral.qkv_bias);
  EXPECT_EQ(mistral.sliding_window, 4096);
}

TEST(LlamaConfig, RejectsBadValues) {
  auto j = llama_json();
  j.erase("hidden_size");
  expect_error<ConfigError>(j, "missing required key 'hidden_size'");
  j = llama_json();
  j["hidden_size"] = "64";
  expect_error<ConfigError>(j, "'hidden_size' must be an integer");
  j = llama_json();
  j["num_attention_heads"] = 0;
  expect_error<ConfigError>(j, "'num_attention_heads' must be >= 1");
  j = llama_json();
  j["num_key_value_heads"] = 3;
  expect_error<ConfigError>(j, "not a multiple of num_key_value_heads");
  j = llama_json();
  j["head_dim"] = 7;
  expect_error<ConfigError>(j, "must be even");
  j = llama_json();
  j["hidden_size"] = 60;
  expect_error<ConfigError>(j, "not a multiple of num_attention_heads");
  j = llama_json();
  j["rms_norm_eps"] = -1;
  expect_error<ConfigError>(j, "'rms_norm_eps' must be positive");
  j = llama_json();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  expect_error<ConfigError>(j, "needs 'low_freq_factor'");
  j = llama_json();
  j.erase("model_type");
  j.erase("architectures");
  expect_error<ConfigError>(j, "architecture is unknown");
  expect_error<ConfigError>(json::array(), "must be a JSON object");
}

TEST(LlamaConfig, Llama3InverseFrequenciesMatchTransformers) {
  // transformers 5.24 _compute_llama3_parameters for head_dim 16, theta 500000, factor 8,
  // low 1, high 4, original 16, printed from Python:
  //   ROPE_INIT_FUNCTIONS['llama3'](LlamaConfig(hidden_size=64, num_attention_heads=4,
  //   head_dim=16, rope_parameters=dict(rope_type='llama3', ...)))
  RopeParams p;
  p.type = RopeParams::Type::kLlama3;
  p.theta = 500000.0;
  p.factor = 8.0;
  p.low_freq_factor = 1.0;
  p.high_freq_factor = 4.0;
  p.original_max_position_embeddings = 16;
  const auto inv = rope_inverse_frequencies(p, 16);
  const std::vector<float> expected{0.5760564f,    0.02424034f,   0.004700754f, 0.0009115831f,
                                    0.0001767767f, 3.428102e-05f, 6.64787e-06f, 1.289173e-06f};
  ASSERT_EQ(inv.size(), expected.size());
  for (std::size_t i = 0; i < inv.size(); ++i)
    EXPECT_NEAR(inv[i], expected[i], 1e-6 * expected[i]) << i;
}

TEST(RopeTable, GrowsAtLeastTwofoldWithTheSameValues) {
  // Generation asks for one position more per token; a device uploads the table each time it
  // grows, so it must grow geometrically, and a grown table must hold what a fresh one holds.
  RopeParams p;
  p.theta = 10000.0;
  RopeTable grown(p, 8);
  grown.ensure(10);
  EXPECT_EQ(grown.positions(), 10);
  grown.ensure(11);
  EXPECT_EQ(grown.positions(), 20);
  grown.ensure(15);
  EXPECT_EQ(grown.positions(), 20);
  grown.ensure(100);
  EXPECT_EQ(grown.positions(), 100);
  RopeTable fresh(p, 8);
  fresh.ensure(100);
  for (Index pos = 0; pos < 100; ++pos)
    for (Index j = 0; j < fresh.half(); ++j) {
      EXPECT_EQ(grown.cos(pos)[j], fresh.cos(pos)[j]) << pos << ' ' << j;
      EXPECT_EQ(grown.sin(pos)[j], fresh.sin(pos)[j]) << pos << ' ' << j;
    }
}

}  // namespace
}  // namespace zerolora
