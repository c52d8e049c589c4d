#include "core/device.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/error.hpp"

namespace zerolora {

namespace {
constexpr std::size_t kAlignment = 256;
// Copies below this many bytes are not worth waking the thread team.
constexpr std::size_t kParallelCopyBytes = std::size_t{1} << 18;

void parallel_copy(int threads, void* dst, const void* src, std::size_t bytes) {
  if (bytes < kParallelCopyBytes || threads <= 1) {
    if (bytes) std::memmove(dst, src, bytes);
    return;
  }
  constexpr std::size_t kChunk = std::size_t{1} << 18;
  const auto chunks = static_cast<std::int64_t>((bytes + kChunk - 1) / kChunk);
  auto* d = static_cast<std::byte*>(dst);
  const auto* s = static_cast<const std::byte*>(src);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (std::int64_t c = 0; c < chunks; ++c) {
    const std::size_t begin = static_cast<std::size_t>(c) * kChunk;
    std::memcpy(d + begin, s + begin, std::min(kChunk, bytes - begin));
  }
}
}  // namespace

void* CpuDevice::allocate(std::size_t bytes) {
  const std::size_t rounded =
      (std::max<std::size_t>(bytes, 1) + kAlignment - 1) / kAlignment * kAlignment;
  void* p = std::aligned_alloc(kAlignment, rounded);
  if (!p)
    throw ResourceError("out of host memory: could not allocate " + std::to_string(bytes) +
                        " bytes (" + std::to_string(allocated_ >> 20) + " MiB already held)");
  allocated_ += bytes;
  peak_ = std::max(peak_, allocated_);
  return p;
}

void CpuDevice::free(void* pointer, std::size_t bytes) noexcept {
  if (!pointer) return;
  std::free(pointer);
  allocated_ -= std::min(bytes, allocated_);
}

void CpuDevice::copy_to_device(void* dst, const void* host_src, std::size_t bytes) {
  parallel_copy(threads_, dst, host_src, bytes);
}

void CpuDevice::copy_to_host(void* host_dst, const void* src, std::size_t bytes) {
  parallel_copy(threads_, host_dst, src, bytes);
}

void CpuDevice::copy(void* dst, const void* src, std::size_t bytes) {
  parallel_copy(threads_, dst, src, bytes);
}

void CpuDevice::copy_rows(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                          std::size_t row_bytes, std::size_t rows) {
  auto* d = static_cast<std::byte*>(dst);
  const auto* s = static_cast<const std::byte*>(src);
  for (std::size_t i = 0; i < rows; ++i)
    std::memcpy(d + i * dst_pitch, s + i * src_pitch, row_bytes);
}

void CpuDevice::fill_zero(void* dst, std::size_t bytes) {
  if (bytes) std::memset(dst, 0, bytes);
}

}  // namespace zerolora
