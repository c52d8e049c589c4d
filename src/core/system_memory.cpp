#include "core/system_memory.hpp"

#include <cstdlib>
#include <fstream>
#include <sstream>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace zerolora {
namespace {

std::optional<double> read_number(const char* path) {
  std::ifstream in(path);
  std::string text;
  if (!(in >> text) || text == "max") return std::nullopt;
  try {
    return std::stod(text);
  } catch (...) {
    return std::nullopt;
  }
}

std::optional<double> mem_available() {
  std::ifstream in("/proc/meminfo");
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::string key;
    double kib = 0;
    if (fields >> key >> kib && key == "MemAvailable:") return kib * 1024.0;
  }
  return std::nullopt;
}

}  // namespace

std::optional<AvailableMemory> available_memory() {
  std::optional<AvailableMemory> best;
  if (auto bytes = mem_available()) best = AvailableMemory{*bytes, "MemAvailable in /proc/meminfo"};
  // A container's limit binds before the machine's memory does.
  const char* const cgroups[][2] = {{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"},
                                    {"/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                     "/sys/fs/cgroup/memory/memory.usage_in_bytes"}};
  for (const auto& [limit_path, usage_path] : cgroups) {
    const auto limit = read_number(limit_path);
    if (!limit || *limit > 1e18) continue;  // v1 reports "no limit" as a huge number
    const double left = *limit - read_number(usage_path).value_or(0.0);
    if (!best || left < best->bytes)
      best = AvailableMemory{left, std::string("the cgroup limit in ") + limit_path};
    break;
  }
  return best;
}

bool return_large_frees_to_the_system() {
#if defined(__GLIBC__)
  for (const char* name : {"GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_"})
    if (const char* value = std::getenv(name); value && *value) return false;
  // 1 MiB: 4 MiB still let the resident set creep; a block this size is a few hundred pages,
  // so mapping it afresh costs well under a percent of the step (measured: +0.1-0.3 s of
  // system time in a 22 s 7B-shape run; throughput within drift, a small cost not ruled out:
  // BENCHMARKS.md, "A flat resident set").
  return mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1;
#else
  return false;
#endif
}

}  // namespace zerolora
