#include "io/checkpoint.hpp"

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.hpp"
#include "io/json_file.hpp"

namespace zerolora {
namespace {

namespace fs = std::filesystem;

// Shard names come from a file we did not write: they must be plain names in the directory.
void check_shard_name(const std::string& name, const fs::path& index) {
  if (name.empty() || name.find('/') != std::string::npos || name.find('\\') != std::string::npos ||
      name == "." || name == "..")
    throw FormatError(index.string() + ": shard file name \"" + name +
                      "\" must be a plain file name inside the model directory");
}

}  // namespace

Checkpoint::Checkpoint(const fs::path& dir) : dir_(dir) {
  if (!fs::is_directory(dir)) throw IoError(dir.string() + ": not a directory");
  const fs::path config_path = dir / "config.json";
  if (!fs::exists(config_path))
    throw IoError(dir.string() + ": no config.json (expected a Hugging Face model directory)");
  config_ = LlamaConfig::load(config_path);

  const fs::path single = dir / "model.safetensors";
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(index)) {
    const auto j = read_json_file(index);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw FormatError(index.string() + ": missing object 'weight_map'");
    std::map<std::string, const SafetensorsFile*> shards;
    for (const auto& [tensor, shard] : j["weight_map"].items()) {
      if (!shard.is_string())
        throw FormatError(index.string() + ": weight_map['" + tensor + "'] must be a file name");
      const auto shard_name = shard.get<std::string>();
      check_shard_name(shard_name, index);
      auto it = shards.find(shard_name);
      if (it == shards.end()) {
        const fs::path shard_path = dir / shard_name;
        if (!fs::exists(shard_path))
          throw IoError(index.string() + ": shard " + shard_name + " (holding '" + tensor +
                        "') does not exist");
        files_.push_back(std::make_unique<SafetensorsFile>(shard_path));
        it = shards.emplace(shard_name, files_.back().get()).first;
      }
      const TensorInfo* info = it->second->find(tensor);
      if (!info)
        throw FormatError(index.string() + ": says '" + tensor + "' is in " + shard_name +
                          ", but that shard has no such tensor");
      tensors_.emplace(tensor, Located{it->second, info});
    }
  } else if (fs::exists(single)) {
    files_.push_back(std::make_unique<SafetensorsFile>(single));
    for (const auto& info : files_.back()->tensors())
      tensors_.emplace(info.name, Located{files_.back().get(), &info});
  } else if (fs::exists(dir / "pytorch_model.bin") ||
             fs::exists(dir / "pytorch_model.bin.index.json")) {
    throw UnsupportedError(
        dir.string() +
        ": has only pytorch_model.bin (pickle) weights; zerolora reads safetensors "
        "only. Convert once in Python: model.save_pretrained(dir, safe_serialization=True)");
  } else {
    throw IoError(dir.string() + ": no model.safetensors or model.safetensors.index.json");
  }
}

std::optional<Checkpoint::Located> Checkpoint::find(std::string_view name) const {
  auto it = tensors_.find(std::string(name));
  if (it == tensors_.end()) return std::nullopt;
  return it->second;
}

Checkpoint::Located Checkpoint::at(std::string_view name) const {
  auto found = find(name);
  if (!found)
    throw ShapeError(dir_.string() + ": checkpoint has no tensor '" + std::string(name) + "'");
  return *found;
}

std::vector<std::string> Checkpoint::tensor_names() const {
  std::vector<std::string> names;
  for (const auto& [name, located] : tensors_) names.push_back(name);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace zerolora
