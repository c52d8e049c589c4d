#include "model/recompute_plan.hpp"

#include <algorithm>
#include <array>

#include "core/error.hpp"
#include "lora/lora_config.hpp"

namespace zerolora {

namespace {
constexpr std::array<Recompute, 6> kModes = {Recompute::kFull,         Recompute::kAttention,
                                             Recompute::kAttentionMlp, Recompute::kSelective,
                                             Recompute::kNone,         Recompute::kAuto};

}  // namespace

const char* recompute_name(Recompute mode) {
  switch (mode) {
    case Recompute::kFull:
      return "full";
    case Recompute::kAttention:
      return "attention";
    case Recompute::kAttentionMlp:
      return "attention_mlp";
    case Recompute::kSelective:
      return "selective";
    case Recompute::kNone:
      return "none";
    case Recompute::kAuto:
      return "auto";
  }
  return "?";
}

Recompute parse_recompute(const std::string& name, const std::string& flag) {
  for (Recompute mode : kModes)
    if (name == recompute_name(mode)) return mode;
  throw ConfigError(flag +
                    " must be full, attention, attention_mlp, selective, none or auto, not '" +
                    name + "'");
}

double kept_elements(Recompute level, const LlamaConfig& c, double rows, LoraZShape lora) {
  const double M = rows, D = static_cast<double>(c.hidden_size),
               W3 = static_cast<double>(c.q_dim() + 2 * c.kv_dim()),
               Qd = static_cast<double>(c.q_dim()), H = static_cast<double>(c.num_heads);
  const double attention = M * Qd + H * M;  // attn, lse
  // The adapted modules' LoRA z, which every level keeps (the recompute expands them).
  const double lora_z = static_cast<double>(lora.modules) * M * lora.rank;
  // + rstd1, rstd2, h1, x2, h2, qkv
  const double block = attention + M * (2 + 3 * D + W3) + lora_z;
  const double gate_up = M * 2 * static_cast<double>(c.intermediate_size);
  switch (level) {
    case Recompute::kFull:
      return lora_z;
    case Recompute::kAttention:
      return attention + lora_z;
    case Recompute::kAttentionMlp:
      return attention + lora_z + gate_up;
    case Recompute::kSelective:
      return block;
    case Recompute::kNone:
      return block + gate_up;
    case Recompute::kAuto:
      break;
  }
  throw ConfigError("kept_elements: auto is a mode, not a layer's level");
}

double default_recompute_budget_bytes(const LlamaConfig& c, double rows) {
  return std::max(rows * static_cast<double>(c.vocab_size) * 8.0, kRecomputeBudgetFloorBytes);
}

Recompute auto_middle_level(const LlamaConfig& c) {
  const double D = static_cast<double>(c.hidden_size);
  const double gate_up = 2 * D * static_cast<double>(c.intermediate_size);
  const double block =
      D * static_cast<double>(c.q_dim() + 2 * c.kv_dim()) + static_cast<double>(c.q_dim()) * D;
  return gate_up >= 2 * block ? Recompute::kAttentionMlp : Recompute::kSelective;
}

std::vector<Recompute> plan_recompute(const LlamaConfig& c, double rows, LoraZShape lora,
                                      std::size_t element_bytes, double budget_bytes) {
  const auto L = static_cast<std::size_t>(c.num_layers);
  std::vector<Recompute> levels(L, Recompute::kFull);
  // Each level keeps a superset of the one before.
  const std::array<Recompute, 4> chain = {Recompute::kFull, Recompute::kAttention,
                                          auto_middle_level(c), Recompute::kNone};
  double left = budget_bytes;
  for (std::size_t i = 1; i < chain.size(); ++i) {
    const Recompute next = chain[i];
    const double step =
        (kept_elements(next, c, rows, lora) - kept_elements(chain[i - 1], c, rows, lora)) *
        static_cast<double>(element_bytes);
    for (auto& level : levels) {
      if (step > left) return levels;
      level = next;
      left -= step;
    }
  }
  return levels;
}

double recompute_budget_from_mib(double mib) {
  return mib < 0 ? -1.0 : mib * 1048576.0;
}

RecomputePlan make_recompute_plan(Recompute mode, const LlamaConfig& c, double rows,
                                  LoraZShape lora, std::size_t element_bytes, double budget_bytes) {
  RecomputePlan plan;
  if (mode == Recompute::kAuto) {
    plan.budget_bytes = budget_bytes >= 0 ? budget_bytes : default_recompute_budget_bytes(c, rows);
    plan.levels = plan_recompute(c, rows, lora, element_bytes, plan.budget_bytes);
  } else {
    plan.levels.assign(static_cast<std::size_t>(c.num_layers), mode);
  }
  for (Recompute level : plan.levels)
    plan.kept_bytes += kept_elements(level, c, rows, lora) * static_cast<double>(element_bytes);
  return plan;
}

std::string describe_recompute_plan(const std::vector<Recompute>& levels) {
  std::string out;
  for (auto it = kModes.rbegin(); it != kModes.rend(); ++it) {
    const auto n = std::count(levels.begin(), levels.end(), *it);
    if (n == 0) continue;
    if (!out.empty()) out += " + ";
    out += std::to_string(n) + " " + recompute_name(*it);
  }
  return out.empty() ? "no layers" : out;
}

}  // namespace zerolora
