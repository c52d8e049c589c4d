// Where the time of a step goes, by kind of work: each op opens a ProfileScope; only the
// outermost scope on the calling thread (outside parallel regions) records, so time inside
// attention's tile GEMMs counts as attention, not as matmul. Off unless enabled; the cost of
// a disabled scope is one branch.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <string_view>

namespace zerolora {

enum class ProfileCategory : int {
  kMatmul,     // base-weight projections and the lm_head
  kLora,       // LoRA branches (their GEMMs and dropout)
  kAttention,  // score tiles, softmax, P V and their backward
  kNorm,
  kRope,
  kSwiglu,
  kLoss,       // cross-entropy (its lm_head GEMMs count as matmul)
  kConvert,    // fp32 -> bf16 operand rounding
  kOptimizer,  // AdamW and clipping
  kOther,      // embedding, copies
  kCount
};

std::string_view profile_category_name(ProfileCategory category);

class Profiler {
 public:
  static constexpr int kCategories = static_cast<int>(ProfileCategory::kCount);

  void enable(bool on) { enabled_ = on; }
  bool enabled() const { return enabled_; }
  void reset() {
    seconds_.fill(0);
    calls_.fill(0);
  }
  double seconds(ProfileCategory c) const { return seconds_[static_cast<int>(c)]; }
  std::int64_t calls(ProfileCategory c) const { return calls_[static_cast<int>(c)]; }
  double total_seconds() const;

 private:
  friend class ProfileScope;
  bool enabled_ = false;
  int depth_ = 0;
  std::array<double, kCategories> seconds_{};
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
