#include "lora/peft_adapter.hpp"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/finite.hpp"
#include "io/json_file.hpp"
#include "io/safetensors.hpp"
#include "io/tensor_read.hpp"

namespace zerolora {
namespace {

using json = nlohmann::ordered_json;

constexpr const char* kConfigFile = "adapter_config.json";
constexpr const char* kWeightsFile = "adapter_model.safetensors";

bool empty_or_null(const json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return true;
  const json& v = j[key];
  return (v.is_object() || v.is_array()) && v.empty();
}

}  // namespace

bool is_peft_adapter_dir(const std::filesystem::path& dir) {
  return std::filesystem::is_regular_file(dir / kConfigFile);
}

void save_peft_adapter(const std::filesystem::path& dir, const LoraLayout& layout,
                       std::span<const float> params, const std::string& base_model_name_or_path) {
  ZL_CHECK(static_cast<Index>(params.size()) == layout.size());
  // Never an adapter that poisons whoever loads it: refuse before anything is written.
  for (const auto& e : layout.entries())
    for (Index i = 0; i < e.numel(); ++i)
      if (const float v = params[static_cast<std::size_t>(e.offset + i)]; !is_finite_value(v))
        throw NumericalError("the adapter for " + dir.string() + " would hold " +
                             nonfinite_name(v) + " in '" + e.name + "' (element " +
                             std::to_string(i) + "); nothing was written");
  std::filesystem::create_directories(dir);
  const LoraConfig& c = layout.config();
  json targets = json::array();
  for (auto m : c.targets) targets.push_back(std::string(lora_module_name(m)));
  json config = {
      {"alpha_pattern", json::object()},
      {"auto_mapping", nullptr},
      {"base_model_name_or_path", base_model_name_or_path},
      {"bias", "none"},
      {"fan_in_fan_out", false},
      {"inference_mode", true},
      {"init_lora_weights", c.init == LoraInit::kGaussian ? json("gaussian") : json(true)},
      {"layers_pattern", nullptr},
      {"layers_to_transform", nullptr},
      {"lora_alpha", c.alpha},
      {"lora_dropout", c.dropout},
      {"modules_to_save", nullptr},
      {"peft_type", "LORA"},
      {"r", c.rank},
      {"rank_pattern", json::object()},
      {"revision", nullptr},
      {"target_modules", targets},
      {"task_type", "CAUSAL_LM"},
      {"use_dora", false},
      {"use_rslora", c.use_rslora}};
  SafetensorsWriter writer;
  for (const auto& e : layout.entries())
    writer.add<float>(
        e.name, DType::kF32, {e.rows, e.cols},
        params.subspan(static_cast<std::size_t>(e.offset), static_cast<std::size_t>(e.numel())));
  writer.set_metadata("format", "pt");
  writer.write(dir / kWeightsFile);
  write_text_file_atomically(dir / kConfigFile, config.dump(2) + "\n");
}

PeftAdapter load_peft_adapter(const std::filesystem::path& dir, const LlamaConfig& base) {
  const auto config_path = dir / kConfigFile;
  if (!std::filesystem::is_directory(dir))
    throw IoError(dir.string() + ": adapter directory not found");
  if (!std::filesystem::exists(config_path))
    throw IoError(dir.string() + ": no adapter_config.json (expected a PEFT adapter directory)");
  const json j = read_ordered_json_file(config_path);
  const std::string label = config_path.string();
  auto need = [&](const char* key) -> const json& {
    if (!j.contains(key) || j[key].is_null()) throw FormatError(label + ": missing '" + key + "'");
    return j[key];
  };
  if (need("peft_type") != "LORA")
    throw UnsupportedError(label + ": peft_type is " + j["peft_type"].dump() +
                           "; zerolora reads LORA adapters");
  if (j.contains("use_dora") && j["use_dora"] == true)
    throw UnsupportedError(label + ": DoRA adapters (use_dora) are not supported");
  if (j.contains("bias") && j["bias"] != "none")
    throw UnsupportedError(label + ": LoRA bias '" + j["bias"].dump() + "' is not supported");
  if (j.contains("fan_in_fan_out") && j["fan_in_fan_out"] == true)
    throw UnsupportedError(label + ": fan_in_fan_out adapters are not supported");
  for (const char* key :
       {"rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"})
    if (!empty_or_null(j, key))
      throw UnsupportedError(
          label + ": '" + key +
          "' is set; per-module ranks, extra trained modules and layer subsets are not supported");

  PeftAdapter adapter;
  if (!need("r").is_number_integer() || j["r"].get<int>() < 1)
    throw FormatError(label + ": 'r' must be a positive integer");
  adapter.config.rank = j["r"].get<int>();
  if (!need("lora_alpha").is_number()) throw FormatError(label + ": 'lora_alpha' must be a number");
  adapter.config.alpha = j["lora_alpha"].get<double>();
  adapter.config.dropout = j.contains("lora_dropout") && j["lora_dropout"].is_number()
                               ? j["lora_dropout"].get<double>()
                               : 0.0;
  adapter.config.use_rslora = j.contains("use_rslora") && j["use_rslora"] == true;
  if (j.contains("base_model_name_or_path") && j["base_model_name_or_path"].is_string())
    adapter.base_model_name_or_path = j["base_model_name_or_path"].get<std::string>();

  // Which modules are adapted: from the tensors themselves (PEFT may store a regex or
  // "all-linear" in target_modules), checked against the layout of this base model.
  const SafetensorsFile weights(dir / kWeightsFile);
  std::set<LoraModule> modules;
  for (const auto& t : weights.tensors()) {
    bool matched = false;
    for (int m = 0; m < kLoraModuleCount && !matched; ++m)
      for (int l = 0; l < base.num_layers && !matched; ++l)
        for (bool b : {false, true})
          if (t.name == lora_tensor_name(l, static_cast<LoraModule>(m), b)) {
            modules.insert(static_cast<LoraModule>(m));
            matched = true;
            break;
          }
    if (!matched)
      throw ShapeError(weights.path().string() + ": tensor '" + t.name +
                       "' is not a LoRA weight of a " + std::to_string(base.num_layers) +
                       "-layer Llama (is the adapter for another base model?)");
  }
  if (modules.empty()) throw FormatError(weights.path().string() + ": holds no LoRA tensors");
  adapter.config.targets.assign(modules.begin(), modules.end());
  adapter.config.validate();
  const LoraLayout layout(base, adapter.config);
  adapter.params.assign(static_cast<std::size_t>(layout.size()), 0.0f);
  for (const auto& e : layout.entries()) {
    const TensorInfo* t = weights.find(e.name);
    if (!t)
      throw ShapeError(weights.path().string() + ": missing '" + e.name +
                       "' (every layer of an adapted module needs one)");
    const std::vector<std::int64_t> expected{e.rows, e.cols};
    if (t->shape != expected)
      throw ShapeError(weights.path().string() + ": tensor '" + e.name + "' has shape " +
                       t->shape_string() + ", but r = " + std::to_string(adapter.config.rank) +
                       " on this base model needs [" + std::to_string(e.rows) + ", " +
                       std::to_string(e.cols) + "] (is the adapter for another base model?)");
    float* values = adapter.params.data() + e.offset;
    read_float_elements(weights, *t, 0, e.numel(), values);
    for (Index i = 0; i < e.numel(); ++i)
      if (!is_finite_value(values[i]))
        throw FormatError(weights.path().string() + ": tensor '" + e.name + "' holds " +
                          nonfinite_name(values[i]) + " at element " + std::to_string(i) +
                          "; the adapter is damaged or was saved from a diverged run");
  }
  return adapter;
}

}  // namespace zerolora
