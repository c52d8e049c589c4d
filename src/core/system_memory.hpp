// How much memory this machine can still give, for refusing up front a run that would be
// ended by the kernel's OOM killer without a word.
#pragma once

#include <optional>
#include <string>

namespace zerolora {

struct AvailableMemory {
  double bytes = 0;
  std::string source;  // where the figure comes from, for messages
};

// The smaller of the kernel's MemAvailable and what the process's cgroup (v2 or v1) still
// allows; nullopt when neither can be read.
std::optional<AvailableMemory> available_memory();

}  // namespace zerolora
