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

// Makes glibc give every freed block of 1 MiB or more back to the system at once (its mmap
// threshold, fixed). By default glibc raises that threshold to the size of the largest block
// freed so far (up to 32 MiB), after which the step's transient buffers (oneDNN's packing, GEMM
// operands, attention tiles) come from the heap, interleave with long-lived blocks, and are
// never returned: the resident set then grew step after step (a 430 MB model at W = 2: 506 MiB
// after step 2, 799 MiB at step 20; fixed: 507-509 MiB from step 2 on). Process-wide, like the
// OpenMP thread count the runtime also sets; left alone when the user set GLIBC_TUNABLES or
// MALLOC_MMAP_THRESHOLD_, and a no-op on other C libraries. Returns whether it set the
// threshold (false: the user's configuration or another C library decides).
bool return_large_frees_to_the_system();

}  // namespace zerolora
