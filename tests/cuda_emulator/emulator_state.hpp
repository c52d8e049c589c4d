// What the CUDA emulator's runtime library shares between its parts: runtime.cpp (the device,
// memory and errors of the CUDA runtime API), streams.cpp (streams and events) and kernels.cpp
// (kernel launches on fibers, the device builtins); cublaslt.cpp and nccl.cpp queue their work
// on streams through it too.
#pragma once

#include <cstddef>
#include <functional>
#include <string>

#include "cuda_runtime.h"

namespace zerolora::cuda_emulator {

// Records `error` as CUDA's last error, with the emulator's description; returns it.
cudaError_t fail(cudaError_t error, const std::string& message);
// The same for an error in work a stream ran (a kernel that could not finish): it also stays,
// as a GPU's does, returned by every synchronisation and by cudaGetLastError from then on.
void fail_in_stream(cudaError_t error, const std::string& message);
cudaError_t sticky_error();

// streams.cpp: `work` runs after the stream's earlier work, on the stream's own thread (a
// collective: NCCL's work, which ZEROLORA_EMULATED_LAG tells apart).
void enqueue(cudaStream_t stream, std::function<void()> work, bool collective = false);
// Until the stream's (every stream's) work so far has run.
void wait_for_stream(cudaStream_t stream);
void wait_for_device();

// "[pointer, +bytes bytes)", for messages.
std::string describe(const void* pointer, std::size_t bytes);

// Where [pointer, pointer + bytes) lies: 1 inside one device allocation, 0 outside all, -1
// when it starts in one and runs past its end.
int device_range(const void* pointer, std::size_t bytes);

}  // namespace zerolora::cuda_emulator
