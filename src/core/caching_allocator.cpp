#include "core/caching_allocator.hpp"

#include <algorithm>
#include <utility>

#include "core/error.hpp"

namespace zerolora {

namespace {
constexpr std::size_t kSmallLimit = std::size_t{1} << 20;
constexpr std::size_t kSmallRound = 512;
constexpr std::size_t kLargeRound = std::size_t{2} << 20;

std::string mib(std::size_t bytes) {
  return std::to_string((bytes + (std::size_t{1} << 19)) >> 20) + " MiB";
}
}  // namespace

CachingAllocator::CachingAllocator(std::string device_name, RawAllocate raw_allocate,
                                   RawFree raw_free, Caching caching)
    : device_name_(std::move(device_name)),
      raw_allocate_(std::move(raw_allocate)),
      raw_free_(std::move(raw_free)),
      caching_(caching) {}

CachingAllocator::~CachingAllocator() {
  release_cached();
  // Blocks still in use belong to buffers that outlive the device: give them back too.
  for (auto& [pointer, size] : in_use_) raw_free_(pointer);
}

std::size_t CachingAllocator::round_size(std::size_t bytes) {
  bytes = std::max<std::size_t>(bytes, 1);
  const std::size_t unit = bytes < kSmallLimit ? kSmallRound : kLargeRound;
  return (bytes + unit - 1) / unit * unit;
}

void* CachingAllocator::allocate(std::size_t bytes) {
  const std::size_t size =
      caching_ == Caching::on ? round_size(bytes) : std::max<std::size_t>(bytes, 1);
  // Best fit among cached blocks that waste at most a quarter of themselves.
  auto it = cached_.lower_bound(size);
  if (it != cached_.end() && it->first - size <= it->first / 4) {
    const auto [block_size, pointer] = *it;
    cached_.erase(it);
    in_use_.emplace(pointer, block_size);
    allocated_ += block_size;
    peak_allocated_ = std::max(peak_allocated_, allocated_);
    return pointer;
  }
  void* pointer = raw_allocate_(size);
  if (!pointer && !cached_.empty()) {
    release_cached();
    pointer = raw_allocate_(size);
  }
  if (!pointer)
    throw ResourceError("out of memory on " + device_name_ + ": could not allocate " + mib(size) +
                        " (" + mib(allocated_) + " in use by zerolora, " + mib(reserved_) +
                        " reserved); use a smaller micro-batch, --gradient_checkpointing, or "
                        "more devices");
  ++device_allocations_;
  reserved_ += size;
  peak_reserved_ = std::max(peak_reserved_, reserved_);
  in_use_.emplace(pointer, size);
  allocated_ += size;
  peak_allocated_ = std::max(peak_allocated_, allocated_);
  return pointer;
}

void CachingAllocator::free(void* pointer) noexcept {
  if (!pointer) return;
  const auto it = in_use_.find(pointer);
  if (it == in_use_.end()) return;  // not ours: ignore rather than corrupt the cache
  allocated_ -= it->second;
  if (caching_ == Caching::on) {
    cached_.emplace(it->second, pointer);
  } else {
    raw_free_(pointer);
    reserved_ -= it->second;
  }
  in_use_.erase(it);
}

void CachingAllocator::release_cached() noexcept {
  for (auto& [size, pointer] : cached_) {
    raw_free_(pointer);
    reserved_ -= size;
  }
  cached_.clear();
}

}  // namespace zerolora
