// `zerolora inspect PATH`: what a model directory or a .safetensors file holds.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "apps/cli.hpp"
#include "apps/commands.hpp"
#include "core/error.hpp"
#include "io/checkpoint.hpp"
#include "io/json_file.hpp"

namespace zerolora::cli {

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char text[32];
  std::snprintf(text, sizeof(text), u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
  return text;
}

namespace {

void print_tensors(const std::vector<const SafetensorsFile*>& files) {
  std::size_t count = 0;
  double total = 0;
  for (const auto* file : files)
    for (const auto& t : file->tensors()) {
      ++count;
      total += static_cast<double>(t.end - t.begin);
    }
  std::printf("tensors: %zu, %s\n", count, human_bytes(total).c_str());
  for (const auto* file : files)
    for (const auto& t : file->tensors())
      std::printf("  %-64s %-5s %-16s %10s  %s\n", t.name.c_str(),
                  std::string(dtype_name(t.dtype)).c_str(), t.shape_string().c_str(),
                  human_bytes(static_cast<double>(t.end - t.begin)).c_str(),
                  file->path().filename().c_str());
}

void inspect_adapter(const std::filesystem::path& path) {
  const auto config = read_json_file(path / "adapter_config.json");
  std::printf("adapter: %s (PEFT %s, task %s)\n", path.c_str(),
              config.value("peft_type", "?").c_str(), config.value("task_type", "?").c_str());
  if (std::filesystem::exists(path / "trainer_state.json")) {
    const auto state =
        nlohmann::json::parse(read_text_file(path / "trainer_state.json"), nullptr, false);
    if (!state.is_discarded())
      std::printf("training checkpoint: step %s, %s rank(s); run: %s\n",
                  state.value("global_step", nlohmann::json()).dump().c_str(),
                  state.value("world_size", nlohmann::json()).dump().c_str(),
                  state.value("signature", nlohmann::json()).dump().c_str());
  }
  for (const char* key : {"base_model_name_or_path", "r", "lora_alpha", "lora_dropout",
                          "target_modules", "use_rslora", "bias"})
    if (config.contains(key)) std::printf("  %-24s %s\n", key, config[key].dump().c_str());
  SafetensorsFile weights(path / "adapter_model.safetensors");
  std::int64_t parameters = 0;
  for (const auto& t : weights.tensors()) parameters += t.numel();
  std::printf("LoRA parameters: %lld\n", static_cast<long long>(parameters));
  print_tensors({&weights});
}

int run_inspect(const std::filesystem::path& path) {
  if (std::filesystem::is_directory(path) &&
      std::filesystem::exists(path / "adapter_config.json")) {
    inspect_adapter(path);
    return 0;
  }
  if (std::filesystem::is_directory(path)) {
    Checkpoint checkpoint(path);
    const LlamaConfig& c = checkpoint.config();
    const char* rope = c.rope.type == RopeParams::Type::kDefault  ? "default"
                       : c.rope.type == RopeParams::Type::kLinear ? "linear"
                                                                  : "llama3";
    std::printf("model: %s\n", path.c_str());
    std::printf(
        "architecture: llama, %lld layers, hidden %lld, intermediate %lld, heads %lld (kv %lld), "
        "head_dim %lld, vocab %lld\n",
        static_cast<long long>(c.num_layers), static_cast<long long>(c.hidden_size),
        static_cast<long long>(c.intermediate_size), static_cast<long long>(c.num_heads),
        static_cast<long long>(c.num_kv_heads), static_cast<long long>(c.head_dim),
        static_cast<long long>(c.vocab_size));
    std::printf("rope: %s, theta %g; rms_norm_eps %g; tied embeddings: %s; dtype: %s\n", rope,
                c.rope.theta, c.rms_norm_eps, c.tie_word_embeddings ? "yes" : "no",
                c.torch_dtype.empty() ? "unspecified" : c.torch_dtype.c_str());
    std::vector<const SafetensorsFile*> files;
    for (const auto& f : checkpoint.files()) files.push_back(f.get());
    std::printf("files: %zu safetensors\n", files.size());
    print_tensors(files);
    return 0;
  }
  if (!std::filesystem::exists(path)) throw IoError(path.string() + ": does not exist");
  SafetensorsFile file(path);
  std::printf("file: %s\n", path.c_str());
  for (const auto& [key, value] : file.metadata())
    std::printf("metadata: %s = %s\n", key.c_str(), value.c_str());
  print_tensors({&file});
  return 0;
}

nlohmann::ordered_json tensors_json(const std::vector<const SafetensorsFile*>& files) {
  auto list = nlohmann::ordered_json::array();
  for (const auto* file : files)
    for (const auto& t : file->tensors())
      list.push_back({{"name", t.name},
                      {"dtype", std::string(dtype_name(t.dtype))},
                      {"shape", t.shape},
                      {"bytes", t.end - t.begin},
                      {"file", file->path().filename().string()}});
  return list;
}

}  // namespace

nlohmann::ordered_json inspect_report(const std::filesystem::path& path) {
  nlohmann::ordered_json report;
  if (std::filesystem::is_directory(path) &&
      std::filesystem::exists(path / "adapter_config.json")) {
    report["kind"] = "adapter";
    report["path"] = path.string();
    report["adapter_config"] = read_json_file(path / "adapter_config.json");
    if (std::filesystem::exists(path / "trainer_state.json")) {
      const auto state =
          nlohmann::json::parse(read_text_file(path / "trainer_state.json"), nullptr, false);
      if (!state.is_discarded()) report["trainer_state"] = state;
    }
    SafetensorsFile weights(path / "adapter_model.safetensors");
    std::int64_t parameters = 0;
    for (const auto& t : weights.tensors()) parameters += t.numel();
    report["parameters"] = parameters;
    report["tensors"] = tensors_json({&weights});
    return report;
  }
  if (std::filesystem::is_directory(path)) {
    Checkpoint checkpoint(path);
    report["kind"] = "model";
    report["path"] = path.string();
    report["config"] = read_json_file(path / "config.json");
    std::vector<const SafetensorsFile*> files;
    for (const auto& f : checkpoint.files()) files.push_back(f.get());
    report["tensors"] = tensors_json(files);
    return report;
  }
  if (!std::filesystem::exists(path)) throw IoError(path.string() + ": does not exist");
  SafetensorsFile file(path);
  report["kind"] = "safetensors";
  report["path"] = path.string();
  report["metadata"] = nlohmann::ordered_json::object();
  for (const auto& [key, value] : file.metadata()) report["metadata"][key] = value;
  report["tensors"] = tensors_json({&file});
  return report;
}

Command add_inspect(CLI::App& app) {
  auto* cmd =
      app.add_subcommand("inspect", "Show what a model directory or a .safetensors file holds");
  auto path = std::make_shared<std::string>();
  cmd->add_option("path", *path,
                  "HF model directory (config.json + safetensors) or a .safetensors file")
      ->required();
  auto json = std::make_shared<bool>(false);
  cmd->add_flag("--json", *json, "Machine-readable output (tensors, config, adapter settings)");
  return [path, json] {
    if (!*json) return run_inspect(*path);
    std::printf("%s\n", inspect_report(*path).dump(2).c_str());
    return 0;
  };
}

}  // namespace zerolora::cli
