#include "lora/lora_config.hpp"

#include <algorithm>
#include <array>
#include <cmath>

#include "core/error.hpp"

namespace zerolora {
namespace {

constexpr std::array<std::string_view, kLoraModuleCount> kNames = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

}  // namespace

std::string_view lora_module_name(LoraModule module) {
  return kNames[static_cast<int>(module)];
}

std::optional<LoraModule> parse_lora_module(std::string_view name) {
  for (int i = 0; i < kLoraModuleCount; ++i)
    if (kNames[i] == name) return static_cast<LoraModule>(i);
  return std::nullopt;
}

std::vector<LoraModule> parse_lora_targets(std::string_view list) {
  std::vector<LoraModule> targets;
  if (list == "all-linear" || list == "all") {
    for (int i = 0; i < kLoraModuleCount; ++i) targets.push_back(static_cast<LoraModule>(i));
    return targets;
  }
  std::size_t start = 0;
  while (start <= list.size()) {
    std::size_t end = list.find(',', start);
    if (end == std::string_view::npos) end = list.size();
    std::string_view item = list.substr(start, end - start);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (!item.empty()) {
      const auto module = parse_lora_module(item);
      if (!module)
        throw ConfigError("unknown LoRA target module '" + std::string(item) +
                          "'; choose from q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                          "down_proj (or all-linear)");
      if (std::find(targets.begin(), targets.end(), *module) == targets.end())
        targets.push_back(*module);
    }
    start = end + 1;
  }
  std::sort(targets.begin(), targets.end());
  return targets;
}

double LoraConfig::scale() const {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(rank)) : alpha / rank;
}

bool LoraConfig::targets_module(LoraModule module) const {
  return std::find(targets.begin(), targets.end(), module) != targets.end();
}

int LoraConfig::module_count() const {
  int n = 0;
  for (int m = 0; m < kLoraModuleCount; ++m) n += targets_module(static_cast<LoraModule>(m));
  return n;
}

void LoraConfig::validate() const {
  if (rank < 1) throw ConfigError("LoRA rank must be >= 1, got " + std::to_string(rank));
  if (!(alpha > 0)) throw ConfigError("LoRA alpha must be positive, got " + std::to_string(alpha));
  if (!(dropout >= 0 && dropout < 1))
    throw ConfigError("LoRA dropout must be in [0, 1), got " + std::to_string(dropout));
  if (targets.empty()) throw ConfigError("LoRA needs at least one target module");
}

}  // namespace zerolora
