// Learning-rate schedules, evaluated at the 0-based optimizer step (the lr of step s):
//   HF Trainer's (transformers.get_scheduler): linear, cosine, constant, constant_with_warmup;
//   warmup rises linearly from 0, so with warmup the first step's lr is 0, as in HF.
//   DeepSpeed's (deepspeed.runtime.lr_schedules): WarmupLR, WarmupDecayLR, WarmupCosineLR,
//   with log or linear warmup.
#pragma once

#include <cstdint>
#include <string>

namespace zerolora {

struct LrSchedule {
  enum class Kind {
    kLinear,
    kCosine,
    kConstant,
    kConstantWithWarmup,
    kWarmupLR,
    kWarmupDecayLR,
    kWarmupCosineLR
  };
  Kind kind = Kind::kLinear;
  double lr = 5e-5;  // peak (HF) / warmup_max_lr or the optimizer lr (DeepSpeed)
  std::int64_t warmup_steps = 0;
  std::int64_t total_steps = 1;
  // DeepSpeed only
  double warmup_min_lr = 0;     // WarmupLR, WarmupDecayLR
  bool log_warmup = true;       // warmup_type "log" (DeepSpeed's default) or "linear"
  double warmup_min_ratio = 0;  // WarmupCosineLR
  double cos_min_ratio = 1e-4;  // WarmupCosineLR

  double at(std::int64_t step) const;
  std::string describe() const;
  // HF's name for the HF kinds ("cosine"), DeepSpeed's for its own ("WarmupLR").
  static const char* kind_name(Kind kind);
};

// "linear", "cosine", "constant", "constant_with_warmup"; throws UsageError otherwise.
LrSchedule::Kind parse_hf_scheduler(const std::string& name);

// HF's warmup: warmup_steps when > 0, else ceil(warmup_ratio * total_steps).
std::int64_t resolve_warmup_steps(std::int64_t warmup_steps, double warmup_ratio,
                                  std::int64_t total_steps);

}  // namespace zerolora
