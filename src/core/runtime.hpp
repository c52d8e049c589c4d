// Runtime: the execution context passed explicitly to every kernel (no global state):
// thread count, the oneDNN engine, per-thread oneDNN streams and scratchpads, and a cache
// of matmul primitives keyed by shape.
#pragma once

#include <memory>

#include "core/profiler.hpp"

namespace zerolora {

namespace detail {
struct RuntimeState;
}

class Runtime {
 public:
  // threads <= 0 means "all hardware threads". Sets the OpenMP team size used by oneDNN.
  explicit Runtime(int threads = 0);
  ~Runtime();
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  int threads() const { return threads_; }

  detail::RuntimeState& state() { return *state_; }
  Profiler& profiler() { return profiler_; }

 private:
  int threads_;
  Profiler profiler_;
  std::unique_ptr<detail::RuntimeState> state_;
};

}  // namespace zerolora
