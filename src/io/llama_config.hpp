// The Llama-family architecture parameters, read from a Hugging Face config.json.
// Accepts, with the defaults transformers applies:
//   llama    LlamaForCausalLM (Llama 2, Llama 3.x, TinyLlama, SmolLM2, ...)
//   qwen2    Qwen2ForCausalLM (Qwen2, Qwen2.5): a Llama with biases on q, k and v
//   mistral  MistralForCausalLM: a Llama whose attention may have a sliding window
// and refuses, with a message saying what is supported, anything the kernels do not implement.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "ops/rope.hpp"

namespace zerolora {

struct LlamaConfig {
  std::int64_t hidden_size = 0;        // D
  std::int64_t intermediate_size = 0;  // I
  std::int64_t num_layers = 0;         // L
  std::int64_t num_heads = 0;          // H
  std::int64_t num_kv_heads = 0;       // KV
  std::int64_t head_dim = 0;           // hd
  std::int64_t vocab_size = 0;         // V
  std::int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  RopeParams rope;
  bool tie_word_embeddings = false;
  std::int64_t bos_token_id = 1;
  std::vector<std::int64_t> eos_token_ids{2};
  std::string torch_dtype;           // informational ("bfloat16", "float32", ...)
  std::string model_type = "llama";  // llama, qwen2, mistral
  bool qkv_bias = false;             // q, k and v projections have biases (qwen2)
  // Mistral's sliding window: a token attends to the previous sliding_window positions only
  // (itself included); 0: none.
  std::int64_t sliding_window = 0;

  std::int64_t q_dim() const { return num_heads * head_dim; }
  std::int64_t kv_dim() const { return num_kv_heads * head_dim; }

  // `label` (usually the file path) prefixes every error.
  static LlamaConfig from_json(const nlohmann::json& json, const std::string& label);
  static LlamaConfig load(const std::filesystem::path& config_json);
};

}  // namespace zerolora
