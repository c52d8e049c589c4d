// A Hugging Face model directory: config.json plus model.safetensors, or
// model.safetensors.index.json with its shard files. Tensors are looked up by HF name
// across shards; files are memory-mapped, so nothing is read until used.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "io/llama_config.hpp"
#include "io/safetensors.hpp"

namespace zerolora {

class Checkpoint {
 public:
  // Throws IoError (missing files), FormatError (bad index/safetensors), ConfigError or
  // UnsupportedError (config.json).
  explicit Checkpoint(const std::filesystem::path& dir);

  struct Located {
    const SafetensorsFile* file;
    const TensorInfo* info;
  };

  const std::filesystem::path& dir() const { return dir_; }
  const LlamaConfig& config() const { return config_; }
  std::optional<Located> find(std::string_view name) const;
  // Throws ShapeError naming the directory when the tensor is absent.
  Located at(std::string_view name) const;
  std::vector<std::string> tensor_names() const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::filesystem::path dir_;
  LlamaConfig config_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, Located> tensors_;
};

}  // namespace zerolora
