// What the CUDA emulator's runtime library shares between its two halves: runtime.cpp (the
// device, memory, errors, streams and events of the CUDA runtime API) and kernels.cpp (kernel
// launches on fibers, the device builtins).
#pragma once

#include <cstddef>
#include <string>

#include "cuda_runtime.h"

namespace zerolora::cuda_emulator {

// Records `error` as CUDA's last error, with the emulator's description; returns it.
cudaError_t fail(cudaError_t error, const std::string& message);

// "[pointer, +bytes bytes)", for messages.
std::string describe(const void* pointer, std::size_t bytes);

// Where [pointer, pointer + bytes) lies: 1 inside one device allocation, 0 outside all, -1
// when it starts in one and runs past its end.
int device_range(const void* pointer, std::size_t bytes);

}  // namespace zerolora::cuda_emulator
