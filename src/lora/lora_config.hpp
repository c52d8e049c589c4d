// LoRA hyper-parameters, with PEFT's meaning and defaults:
//   y = W x + scale * B (A (dropout(x))),   scale = alpha / r (or alpha / sqrt(r): rsLoRA)
//   A: [r, in] initialised kaiming-uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), or
//      N(0, 1/r) ("gaussian"); B: [out, r] zeros.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace zerolora {

// The seven Llama projections LoRA can adapt, in layer order.
enum class LoraModule : int { kQ, kK, kV, kO, kGate, kUp, kDown };
inline constexpr int kLoraModuleCount = 7;
// The attention block's four.
inline constexpr std::array<LoraModule, 4> kAttentionLoraModules = {LoraModule::kQ, LoraModule::kK,
                                                                    LoraModule::kV, LoraModule::kO};

std::string_view lora_module_name(LoraModule module);  // "q_proj", ...
std::optional<LoraModule> parse_lora_module(std::string_view name);
// "q_proj,k_proj" or "all-linear"; throws ConfigError naming the bad entry.
std::vector<LoraModule> parse_lora_targets(std::string_view list);

enum class LoraInit { kKaimingUniform, kGaussian };

struct LoraConfig {
  int rank = 8;
  double alpha = 16.0;
  double dropout = 0.05;
  std::vector<LoraModule> targets{LoraModule::kQ, LoraModule::kK, LoraModule::kV, LoraModule::kO};
  bool use_rslora = false;
  LoraInit init = LoraInit::kKaimingUniform;

  double scale() const;
  bool targets_module(LoraModule module) const;
  // How many of the seven modules it adapts (in every layer): each keeps an [M, r] z a layer.
  int module_count() const;
  // Throws ConfigError for rank < 1, alpha <= 0, dropout outside [0, 1), no targets.
  void validate() const;
};

}  // namespace zerolora
