// Where the time of a step goes, by kind of work: each op opens a ProfileScope; only the
// outermost scope on the calling thread (outside parallel regions) records, so time inside
// attention's tile GEMMs counts as attention, not as matmul. Off unless enabled; the cost of
// a disabled scope is one branch.
// On a device whose work runs apart from the host (a GPU) the host only launches: there a
// DeviceClock (Device::make_clock) also marks each outermost scope's start and end in the
// device's stream, and collect_device() adds up, per kind, the device time between the marks,
// without making the host wait inside the step.
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

// A device's own clock, for the scopes' work as the device ran it.
class DeviceClock {
 public:
  virtual ~DeviceClock() = default;
  virtual void mark_start() = 0;                        // an outermost scope opens
  virtual void mark_end(ProfileCategory category) = 0;  // and closes
  // Waits for the marks made so far and adds each scope's device seconds to its kind.
  virtual void collect(std::array<double, kProfileCategories>& seconds) = 0;
};

class Profiler {
 public:
  static constexpr int kCategories = kProfileCategories;

  void enable(bool on) { enabled_ = on; }
  bool enabled() const { return enabled_; }
  // The device's clock (null: none); it must outlive its use here.
  void set_device_clock(DeviceClock* clock) { clock_ = clock; }
  void reset();
  double seconds(ProfileCategory c) const { return seconds_[static_cast<int>(c)]; }
  std::int64_t calls(ProfileCategory c) const { return calls_[static_cast<int>(c)]; }
  double total_seconds() const;
  // The device time of the scopes since the last reset (waits for the device's marks).
  void collect_device();
  double device_seconds(ProfileCategory c) const { return device_seconds_[static_cast<int>(c)]; }
  double total_device_seconds() const;

 private:
  friend class ProfileScope;
  bool enabled_ = false;
  int depth_ = 0;
  DeviceClock* clock_ = nullptr;
  std::array<double, kCategories> seconds_{}, device_seconds_{};
  std::array<std::int64_t, kCategories> calls_{};
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
  std::chrono::steady_clock::time_point start_;
};

}  // namespace zerolora
