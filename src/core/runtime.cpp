#include "core/runtime.hpp"

#include <omp.h>

#include <cstdlib>
#include <thread>

#include "core/runtime_state.hpp"
#include "core/system_memory.hpp"

namespace zerolora {

namespace detail {

std::size_t MatmulKeyHash::operator()(const MatmulKey& key) const noexcept {
  std::size_t h = 1469598103934665603ull;
  auto add = [&h](std::uint64_t v) { h = (h ^ v) * 1099511628211ull; };
  for (std::int64_t v : {key.m, key.n, key.k, key.a_rs, key.a_cs, key.b_rs, key.b_cs, key.c_rs})
    add(static_cast<std::uint64_t>(v));
  add(static_cast<std::uint64_t>(key.in_type) * 16 + static_cast<std::uint64_t>(key.out_type));
  add(static_cast<std::uint64_t>(key.alpha * 1048576.0f) * 2 + (key.accumulate ? 1 : 0));
  return h;
}

RuntimeState::RuntimeState(int threads) : engine(dnnl::engine::kind::cpu, 0) {
  for (int t = 0; t < threads; ++t) streams.emplace_back(engine);
  scratchpads.resize(static_cast<std::size_t>(threads));
}

}  // namespace detail

Runtime::Runtime(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
  if (threads <= 0) threads = 1;
  threads_ = threads;
  // oneDNN's OpenMP runtime sizes its parallel regions from this process-wide setting.
  omp_set_num_threads(threads_);
  // oneDNN annotates every primitive for Intel VTune unless told not to: ~1% of a small
  // model's step. Respect a user's own setting.
  setenv("DNNL_ITT_TASK_LEVEL", "0", 0);
  // Transient buffers freed in a step go back to the system: a flat resident set, step after step.
  return_large_frees_to_the_system();
  state_ = std::make_unique<detail::RuntimeState>(threads_);
  device_ = std::make_unique<CpuDevice>(threads_);
}

Runtime::Runtime(int threads, std::unique_ptr<Device> device) : Runtime(threads) {
  if (device) device_ = std::move(device);
}

Runtime::~Runtime() = default;

}  // namespace zerolora
