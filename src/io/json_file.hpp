// Reading small JSON files (configs, indexes, adapter configs, checkpoint state) with errors
// that name the file: IoError when it cannot be read, FormatError when it is not JSON.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace zerolora {

std::string read_text_file(const std::filesystem::path& path);
nlohmann::json read_json_file(const std::filesystem::path& path);
nlohmann::ordered_json read_ordered_json_file(const std::filesystem::path& path);

}  // namespace zerolora
