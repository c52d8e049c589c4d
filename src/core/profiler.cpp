#include "core/profiler.hpp"

#include <omp.h>

namespace zerolora {

std::string_view profile_category_name(ProfileCategory category) {
  constexpr std::array<std::string_view, Profiler::kCategories> names = {
      "matmul", "lora", "attention", "norm",      "rope",
      "swiglu", "loss", "convert",   "optimizer", "other"};
  return names[static_cast<int>(category)];
}

void Profiler::reset() {
  seconds_ = {};
  calls_.fill(0);
  collect_device();  // drops the marks made so far
  device_seconds_ = {};
}

double Profiler::sum_parts(const ProfileSeconds& seconds, ProfileCategory c) {
  double total = 0;
  for (const auto& part : seconds) total += part[static_cast<int>(c)];
  return total;
}

double Profiler::sum_kinds(const ProfileSeconds& seconds, StepPart part) {
  double total = 0;
  for (double s : seconds[static_cast<int>(part)]) total += s;
  return total;
}

double Profiler::sum_all(const ProfileSeconds& seconds) {
  double total = 0;
  for (int part = 0; part < kStepParts; ++part)
    total += sum_kinds(seconds, static_cast<StepPart>(part));
  return total;
}

double Profiler::total_seconds() const {
  return sum_all(seconds_);
}

void Profiler::collect_device() {
  if (clock_) clock_->collect(device_seconds_);
}

double Profiler::total_device_seconds() const {
  return sum_all(device_seconds_);
}

ProfileScope::ProfileScope(Profiler& profiler, ProfileCategory category) : category_(category) {
  if (!profiler.enabled_ || omp_in_parallel()) return;
  if (profiler.depth_++ > 0) return;  // nested: the outer scope owns the time
  profiler_ = &profiler;
  part_ = profiler.part_;
  if (profiler.clock_) profiler.clock_->mark_start();
  start_ = std::chrono::steady_clock::now();
}

ProfileScope::~ProfileScope() {
  if (!profiler_) return;
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  profiler_->seconds_[static_cast<int>(part_)][static_cast<int>(category_)] += elapsed;
  profiler_->calls_[static_cast<int>(category_)] += 1;
  if (profiler_->clock_) profiler_->clock_->mark_end(category_, part_);
  profiler_->depth_ = 0;
}

}  // namespace zerolora
