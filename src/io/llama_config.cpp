#include "io/llama_config.hpp"

#include <algorithm>
#include <array>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/error.hpp"
#include "io/json_file.hpp"

namespace zerolora {
namespace {

using json = nlohmann::json;

class Reader {
 public:
  Reader(const json& object, std::string label) : object_(object), label_(std::move(label)) {}

  bool has(const char* key) const { return object_.contains(key) && !object_.at(key).is_null(); }

  std::int64_t integer(const char* key, std::optional<std::int64_t> fallback,
                       std::int64_t min) const {
    if (!has(key)) {
      if (fallback) return *fallback;
      throw ConfigError(label_ + ": missing required key '" + key + "'");
    }
    const json& v = object_.at(key);
    if (!v.is_number_integer())
      throw ConfigError(label_ + ": '" + key + "' must be an integer, got " + v.dump());
    const auto value = v.get<std::int64_t>();
    if (value < min)
      throw ConfigError(label_ + ": '" + key + "' must be >= " + std::to_string(min) + ", got " +
                        std::to_string(value));
    return value;
  }

  double number(const char* key, double fallback, bool positive) const {
    if (!has(key)) return fallback;
    const json& v = object_.at(key);
    if (!v.is_number())
      throw ConfigError(label_ + ": '" + key + "' must be a number, got " + v.dump());
    const double value = v.get<double>();
    if (positive && !(value > 0))
      throw ConfigError(label_ + ": '" + key + "' must be positive, got " + v.dump());
    return value;
  }

  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = object_.at(key);
    if (!v.is_boolean())
      throw ConfigError(label_ + ": '" + key + "' must be true or false, got " + v.dump());
    return v.get<bool>();
  }

  std::string string(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const json& v = object_.at(key);
    if (!v.is_string())
      throw ConfigError(label_ + ": '" + key + "' must be a string, got " + v.dump());
    return v.get<std::string>();
  }

 private:
  const json& object_;
  std::string label_;
};

constexpr const char* kSupported =
    "zerolora supports Llama-family checkpoints: model_type \"llama\" (LlamaForCausalLM), "
    "\"qwen2\" (Qwen2ForCausalLM) and \"mistral\" (MistralForCausalLM)";

// The architecture's model_type ("llama", "qwen2", "mistral").
std::string check_architecture(const json& j, const std::string& label) {
  static constexpr std::array<std::pair<const char*, const char*>, 3> kKnown{{
      {"llama", "LlamaForCausalLM"},
      {"qwen2", "Qwen2ForCausalLM"},
      {"mistral", "MistralForCausalLM"},
  }};
  const bool has_type = j.contains("model_type") && j["model_type"].is_string();
  const std::string model_type = has_type ? j["model_type"].get<std::string>() : "";
  std::string architectures, from_architecture;
  if (j.contains("architectures") && j["architectures"].is_array()) {
    for (const auto& a : j["architectures"]) {
      if (!a.is_string()) continue;
      architectures += (architectures.empty() ? "" : ", ") + a.get<std::string>();
      for (const auto& [type, arch] : kKnown)
        if (a.get<std::string>() == arch) from_architecture = type;
    }
  }
  const bool known_type = std::any_of(kKnown.begin(), kKnown.end(),
                                      [&](const auto& k) { return model_type == k.first; });
  if (has_type && !known_type)
    throw UnsupportedError(label + ": model_type is \"" + model_type + "\"" +
                           (architectures.empty() ? "" : " (" + architectures + ")") + "; " +
                           kSupported);
  if (!architectures.empty() && from_architecture.empty())
    throw UnsupportedError(label + ": architectures is [" + architectures + "]; " + kSupported);
  if (has_type && !from_architecture.empty() && from_architecture != model_type)
    throw ConfigError(label + ": model_type \"" + model_type + "\" and architectures [" +
                      architectures + "] disagree");
  if (!has_type && architectures.empty())
    throw ConfigError(
        label +
        ": neither 'model_type' nor 'architectures' is set, so the architecture is unknown; " +
        kSupported);
  return has_type ? model_type : from_architecture;
}

RopeParams parse_rope(const json& j, const Reader& top, std::int64_t max_positions,
                      const std::string& label) {
  RopeParams rope;
  rope.theta = top.number("rope_theta", 10000.0, true);
  const json* params = nullptr;
  std::string key;
  for (const char* candidate : {"rope_parameters", "rope_scaling"}) {
    if (j.contains(candidate) && !j[candidate].is_null()) {
      params = &j[candidate];
      key = candidate;
      break;
    }
  }
  if (!params) return rope;
  if (!params->is_object()) throw ConfigError(label + ": '" + key + "' must be an object or null");
  const Reader r(*params, label + " (" + key + ")");
  rope.theta = r.number("rope_theta", rope.theta, true);
  std::string type = r.string("rope_type", r.string("type", "default"));
  if (type == "default") {
    rope.type = RopeParams::Type::kDefault;
  } else if (type == "linear") {
    rope.type = RopeParams::Type::kLinear;
    if (!r.has("factor")) throw ConfigError(label + ": " + key + " of type linear needs 'factor'");
    rope.factor = r.number("factor", 1.0, true);
  } else if (type == "llama3") {
    rope.type = RopeParams::Type::kLlama3;
    for (const char* needed : {"factor", "low_freq_factor", "high_freq_factor"})
      if (!r.has(needed))
        throw ConfigError(label + ": " + key + " of type llama3 needs '" + needed + "'");
    rope.factor = r.number("factor", 1.0, true);
    rope.low_freq_factor = r.number("low_freq_factor", 1.0, true);
    rope.high_freq_factor = r.number("high_freq_factor", 4.0, true);
    if (!(rope.high_freq_factor > rope.low_freq_factor))
      throw ConfigError(label + ": " + key + ": high_freq_factor must exceed low_freq_factor");
    rope.original_max_position_embeddings =
        r.integer("original_max_position_embeddings", max_positions, 1);
  } else {
    throw UnsupportedError(label + ": rope type \"" + type +
                           "\" is not supported; supported: default, linear, llama3");
  }
  return rope;
}

}  // namespace

LlamaConfig LlamaConfig::from_json(const json& j, const std::string& label) {
  if (!j.is_object()) throw ConfigError(label + ": must be a JSON object");
  const Reader r(j, label);
  LlamaConfig c;
  c.model_type = check_architecture(j, label);
  c.hidden_size = r.integer("hidden_size", std::nullopt, 1);
  c.intermediate_size = r.integer("intermediate_size", std::nullopt, 1);
  c.num_layers = r.integer("num_hidden_layers", std::nullopt, 1);
  c.num_heads = r.integer("num_attention_heads", std::nullopt, 1);
  c.num_kv_heads = r.integer("num_key_value_heads", c.num_heads, 1);
  c.vocab_size = r.integer("vocab_size", std::nullopt, 1);
  if (c.hidden_size % c.num_heads != 0)
    throw ConfigError(label + ": hidden_size " + std::to_string(c.hidden_size) +
                      " is not a multiple of num_attention_heads " + std::to_string(c.num_heads));
  c.head_dim = r.integer("head_dim", c.hidden_size / c.num_heads, 2);
  if (c.head_dim % 2 != 0)
    throw ConfigError(label + ": head_dim " + std::to_string(c.head_dim) +
                      " must be even for RoPE");
  if (c.num_heads % c.num_kv_heads != 0)
    throw ConfigError(label + ": num_attention_heads " + std::to_string(c.num_heads) +
                      " is not a multiple of num_key_value_heads " +
                      std::to_string(c.num_kv_heads));
  c.max_position_embeddings = r.integer("max_position_embeddings", 2048, 1);
  c.rms_norm_eps = r.number("rms_norm_eps", 1e-6, true);
  c.rope = parse_rope(j, r, c.max_position_embeddings, label);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  c.bos_token_id = r.integer("bos_token_id", 1, 0);
  if (r.has("eos_token_id")) {
    const json& eos = j["eos_token_id"];
    c.eos_token_ids.clear();
    if (eos.is_number_integer()) {
      c.eos_token_ids.push_back(eos.get<std::int64_t>());
    } else if (eos.is_array()) {
      for (const auto& e : eos) {
        if (!e.is_number_integer())
          throw ConfigError(label + ": 'eos_token_id' entries must be integers");
        c.eos_token_ids.push_back(e.get<std::int64_t>());
      }
    } else {
      throw ConfigError(label + ": 'eos_token_id' must be an integer or a list of integers");
    }
  }
  c.torch_dtype = r.string("torch_dtype", r.string("dtype", ""));

  const std::string act = r.string("hidden_act", "silu");
  if (act != "silu")
    throw UnsupportedError(label + ": hidden_act \"" + act +
                           "\" is not supported (Llama uses silu)");
  if (c.model_type == "llama" && r.boolean("attention_bias", false))
    throw UnsupportedError(
        label +
        ": attention_bias = true is not supported (biases on q, k, v and o; zerolora "
        "implements Qwen2's q, k and v biases only)");
  c.qkv_bias = c.model_type == "qwen2";  // Qwen2's projections always have them
  if (c.model_type == "qwen2" && r.boolean("use_sliding_window", false))
    throw UnsupportedError(label +
                           ": use_sliding_window = true is not supported for Qwen2 (its "
                           "released models leave it off)");
  if (c.model_type == "mistral") c.sliding_window = r.integer("sliding_window", 0, 1);
  if (r.boolean("mlp_bias", false))
    throw UnsupportedError(
        label + ": mlp_bias = true is not supported (Llama's MLP projections have no bias)");
  if (r.number("attention_dropout", 0.0, false) != 0.0)
    throw UnsupportedError(label +
                           ": attention_dropout must be 0 (attention dropout is not implemented)");
  if (r.has("quantization_config"))
    throw UnsupportedError(label +
                           ": quantized checkpoints (quantization_config) are not supported");
  return c;
}

LlamaConfig LlamaConfig::load(const std::filesystem::path& config_json) {
  return from_json(read_json_file(config_json), config_json.string());
}

}  // namespace zerolora
