#include "io/json_file.hpp"

#include <fstream>
#include <sstream>

#include "core/error.hpp"

namespace zerolora {

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path.string() + ": cannot open");
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

template <class Json>
static Json parse_file(const std::filesystem::path& path) {
  const std::string text = read_text_file(path);
  try {
    return Json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(path.string() + ": not valid JSON (" + e.what() + ")");
  }
}

nlohmann::json read_json_file(const std::filesystem::path& path) {
  return parse_file<nlohmann::json>(path);
}

nlohmann::ordered_json read_ordered_json_file(const std::filesystem::path& path) {
  return parse_file<nlohmann::ordered_json>(path);
}

}  // namespace zerolora
