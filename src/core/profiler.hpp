// Where the time of a step goes, by kind of work: each op opens a ProfileScope; only the
// outermost scope on the calling thread (outside parallel regions) records, so time inside
// attention's tile GEMMs counts as attention, not as matmul. Off unless enabled; the cost of
// a disabled scope is one branch.
// On a device whose work runs apart from the host (a GPU) the host only launches: there a
// DeviceClock (Device::make_clock) also marks each outermost scope's start and end in the
// device's stream, and collect_device() adds up, per kind and part, the device time between the
// marks, without making the host wait inside the step. Each scope also counts in a part of the step
// (ProfilePart sets it): the decoder layers' or the work done once per step around them, so that a
// benchmark of a few layers can tell what a model of many would take (scripts/gpu-check.sh's
// projection of the seed's 80 layers).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <string_view>

namespace zerolora {

enum class ProfileCategory : int {
  kMatmul,     // base-weight projections and the lm_head
  kLora,       // LoRA branches (their GEMMs and dropout)
  kAttention,  // score tiles, softmax, P V and their backward (on a GPU: cuDNN's kernels)
  kNorm,
  kRope,
  kSwiglu,
  kLoss,       // cross-entropy (its lm_head GEMMs count as matmul)
  kConvert,    // fp32 -> bf16 operand rounding (and cuDNN attention's layout copies)
  kOptimizer,  // AdamW and clipping
  kOther,      // embedding, copies
  kCount
};

std::string_view profile_category_name(ProfileCategory category);

constexpr int kProfileCategories = static_cast<int>(ProfileCategory::kCount);

// Where in the step: the decoder layers (their forward, backward and recompute, and the
// optimizer over their LoRA weights: all grow with the layer count) or the work done once per
// step whatever the layer count (the embedding, the final norm, the lm_head and the loss).
enum class StepPart : int { kLayers, kOncePerStep, kCount };
constexpr int kStepParts = static_cast<int>(StepPart::kCount);

// Seconds per part of the step and kind of work.
using ProfileSeconds = std::array<std::array<double, kProfileCategories>, kStepParts>;

// A device's own clock, for the scopes' work as the device ran it.
class DeviceClock {
 public:
  virtual ~DeviceClock() = default;
  virtual void mark_start() = 0;                                       // an outermost scope opens
  virtual void mark_end(ProfileCategory category, StepPart part) = 0;  // and closes
  // Waits for the marks made so far and adds each scope's device seconds to its part and kind.
  virtual void collect(ProfileSeconds& seconds) = 0;
};

class Profiler {
 public:
  static constexpr int kCategories = kProfileCategories;

  void enable(bool on) { enabled_ = on; }
  bool enabled() const { return enabled_; }
  // The device's clock (null: none); it must outlive its use here.
  void set_device_clock(DeviceClock* clock) { clock_ = clock; }
  void reset();
  // The host's time of a kind of work (both parts), of a part (every kind), of everything.
  double seconds(ProfileCategory c) const { return sum_parts(seconds_, c); }
  double seconds(StepPart part) const { return sum_kinds(seconds_, part); }
  double total_seconds() const;
  std::int64_t calls(ProfileCategory c) const { return calls_[static_cast<int>(c)]; }
  // The device time of the scopes since the last reset (waits for the device's marks).
  void collect_device();
  double device_seconds(ProfileCategory c) const { return sum_parts(device_seconds_, c); }
  double device_seconds(StepPart part) const { return sum_kinds(device_seconds_, part); }
  double total_device_seconds() const;

 private:
  friend class ProfileScope;
  friend class ProfilePart;
  static double sum_parts(const ProfileSeconds& seconds, ProfileCategory c);
  static double sum_kinds(const ProfileSeconds& seconds, StepPart part);
  static double sum_all(const ProfileSeconds& seconds);  // every part, every kind
  bool enabled_ = false;
  int depth_ = 0;
  StepPart part_ = StepPart::kLayers;
  DeviceClock* clock_ = nullptr;
  ProfileSeconds seconds_{}, device_seconds_{};
  std::array<std::int64_t, kCategories> calls_{};
};

// Scopes opened while it lives count in `part` (then the enclosing part again).
class ProfilePart {
 public:
  ProfilePart(Profiler& profiler, StepPart part) : profiler_(profiler), outer_(profiler.part_) {
    profiler.part_ = part;
  }
  ~ProfilePart() { profiler_.part_ = outer_; }
  ProfilePart(const ProfilePart&) = delete;
  ProfilePart& operator=(const ProfilePart&) = delete;

 private:
  Profiler& profiler_;
  StepPart outer_;
};

class ProfileScope {
 public:
  ProfileScope(Profiler& profiler, ProfileCategory category);
  ~ProfileScope();
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  Profiler* profiler_ = nullptr;  // null: not recording
  ProfileCategory category_;
  StepPart part_ = StepPart::kLayers;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace zerolora
