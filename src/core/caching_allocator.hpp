// A caching allocator for device memory that is slow to allocate (cudaMalloc synchronises the
// device and costs milliseconds): freed blocks are kept, binned by rounded size, and handed out
// again, so a training step allocates nothing from the driver once the first step has run.
// All work runs on one stream, so a block freed by the host may be reused at once: stream
// order makes the next user's kernels run after the last user's.
// Sizes round up to 512 bytes below 1 MiB and to 2 MiB above, and a cached block is reused for a
// request only when it wastes at most a quarter of itself, so activations of a fixed-size batch
// find their blocks again exactly. When the device says no, the cache is given back to the
// device and the request retried once; then ResourceError names the request and the state.
// Without caching (Caching::off), every request is its own raw allocation of exactly its size,
// given back when freed: for memory checkers (compute-sanitizer's memcheck), which see an access
// past a buffer's end only where the buffer's allocation ends.
// Host-only bookkeeping over two raw functions: tested on the CPU with host memory.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <string>
#include <unordered_map>

namespace zerolora {

class CachingAllocator {
 public:
  // raw_allocate returns null when the device has no room.
  using RawAllocate = std::function<void*(std::size_t bytes)>;
  using RawFree = std::function<void(void* pointer)>;

  enum class Caching { on, off };

  CachingAllocator(std::string device_name, RawAllocate raw_allocate, RawFree raw_free,
                   Caching caching = Caching::on);
  ~CachingAllocator();
  CachingAllocator(const CachingAllocator&) = delete;
  CachingAllocator& operator=(const CachingAllocator&) = delete;

  void* allocate(std::size_t bytes);
  void free(void* pointer) noexcept;
  // Gives every cached (free) block back to the device.
  void release_cached() noexcept;

  static std::size_t round_size(std::size_t bytes);

  std::size_t allocated_bytes() const { return allocated_; }  // in use, rounded sizes
  std::size_t reserved_bytes() const { return reserved_; }    // from the device, cached included
  std::size_t peak_allocated_bytes() const { return peak_allocated_; }
  std::size_t peak_reserved_bytes() const { return peak_reserved_; }
  std::size_t device_allocations() const { return device_allocations_; }
  void reset_peak() {
    peak_allocated_ = allocated_;
    peak_reserved_ = reserved_;
  }

 private:
  std::string device_name_;
  RawAllocate raw_allocate_;
  RawFree raw_free_;
  Caching caching_;
  std::multimap<std::size_t, void*> cached_;       // free blocks by size
  std::unordered_map<void*, std::size_t> in_use_;  // block -> rounded size
  std::size_t allocated_ = 0, reserved_ = 0, peak_allocated_ = 0, peak_reserved_ = 0;
  std::size_t device_allocations_ = 0;
};

}  // namespace zerolora
