// Runtime: the execution context passed explicitly to every kernel (no global state):
// thread count, the device the model runs on (host memory unless told otherwise), the oneDNN
// engine, per-thread oneDNN streams and scratchpads, and a cache of matmul primitives keyed by
// shape.
#pragma once

#include <memory>

#include "core/device.hpp"
#include "core/profiler.hpp"

namespace zerolora {

namespace detail {
struct RuntimeState;
}

class Runtime {
 public:
  // threads <= 0 means "all hardware threads". Sets the OpenMP team size used by oneDNN.
  explicit Runtime(int threads = 0);
  // The same, with the model on `device` (host threads still serve the host-side work).
  Runtime(int threads, std::unique_ptr<Device> device);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  int threads() const { return threads_; }
  Device& device() { return *device_; }

  detail::RuntimeState& state() { return *state_; }
  Profiler& profiler() { return profiler_; }

 private:
  int threads_;
  Profiler profiler_;
  std::unique_ptr<Device> device_;
  std::unique_ptr<detail::RuntimeState> state_;
};

}  // namespace zerolora
