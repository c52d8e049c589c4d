#include "train/lr_schedule.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"

namespace zerolora {

LrSchedule::Kind parse_hf_scheduler(const std::string& name) {
  if (name == "linear") return LrSchedule::Kind::kLinear;
  if (name == "cosine") return LrSchedule::Kind::kCosine;
  if (name == "constant") return LrSchedule::Kind::kConstant;
  if (name == "constant_with_warmup") return LrSchedule::Kind::kConstantWithWarmup;
  throw UsageError("unknown --lr_scheduler_type '" + name +
                   "' (choose linear, cosine, constant or constant_with_warmup)");
}

std::int64_t resolve_warmup_steps(std::int64_t warmup_steps, double warmup_ratio,
                                  std::int64_t total_steps) {
  if (warmup_steps > 0) return warmup_steps;
  return static_cast<std::int64_t>(std::ceil(static_cast<double>(total_steps) * warmup_ratio));
}

double LrSchedule::at(std::int64_t step) const {
  const double s = static_cast<double>(step), w = static_cast<double>(warmup_steps);
  const double total = static_cast<double>(total_steps);
  switch (kind) {
    case Kind::kConstant:
      return lr;
    case Kind::kConstantWithWarmup:
      return step < warmup_steps ? lr * s / std::max(1.0, w) : lr;
    case Kind::kLinear:
      if (step < warmup_steps) return lr * s / std::max(1.0, w);
      return lr * std::max(0.0, (total - s) / std::max(1.0, total - w));
    case Kind::kCosine: {
      if (step < warmup_steps) return lr * s / std::max(1.0, w);
      const double progress = (s - w) / std::max(1.0, total - w);
      return lr * std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
    }
    case Kind::kWarmupLR:
    case Kind::kWarmupDecayLR:
    case Kind::kWarmupCosineLR: {
      // DeepSpeed's warmup fraction: log(step + 1) / log(warmup) or step / warmup
      double gamma = 1.0;
      if (step < warmup_steps)
        gamma = log_warmup ? std::log(s + 1.0) / std::log(std::max(2.0, w)) : s / std::max(1.0, w);
      if (kind == Kind::kWarmupCosineLR) {
        if (step < warmup_steps) return lr * (warmup_min_ratio + (1.0 - warmup_min_ratio) * gamma);
        const double progress = (s - w) / std::max(1.0, total - w);
        const double ratio = (1.0 + std::cos(M_PI * progress)) / 2.0;
        return lr * std::max(0.0, cos_min_ratio + (1.0 - cos_min_ratio) * ratio);
      }
      if (kind == Kind::kWarmupDecayLR && step >= warmup_steps)
        gamma = std::max(0.0, (total - s) / std::max(1.0, total - w));
      return warmup_min_lr + (lr - warmup_min_lr) * gamma;
    }
  }
  return lr;
}

const char* LrSchedule::kind_name(Kind kind) {
  static const char* names[] = {
      "linear",   "cosine",        "constant",      "constant_with_warmup",
      "WarmupLR", "WarmupDecayLR", "WarmupCosineLR"};
  return names[static_cast<int>(kind)];
}

std::string LrSchedule::describe() const {
  return std::string(kind_name(kind)) + ", peak lr " + std::to_string(lr) + ", " +
         std::to_string(warmup_steps) + " warmup of " + std::to_string(total_steps) + " steps";
}

}  // namespace zerolora
