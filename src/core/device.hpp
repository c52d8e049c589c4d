// Device: where a model's tensors live and how bytes move there. The model code is written once
// against this interface and the kernel interface (src/ops/kernels.hpp); the runtime owns one
// device. CpuDevice is host memory (the default); the CUDA device (src/cuda/) is one GPU with
// its stream and a caching allocator.
//
// Every call is ordered after the work already issued to the device (stream order on a GPU),
// copy_to_host returns only when the bytes are on the host, and copy_to_device only when the
// host bytes have been read (the caller may reuse them). Pointers handed out by allocate()
// are device pointers: the host may dereference them only when host_accessible().
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <utility>

#include "core/profiler.hpp"

namespace zerolora {

enum class DeviceKind { kCpu, kCuda };

class Device {
 public:
  virtual ~Device() = default;
  virtual DeviceKind kind() const = 0;
  // "cpu", "cuda:0 (NVIDIA H200)": for messages and metrics.
  virtual std::string name() const = 0;
  // Whether the host may read and write device pointers directly (skips staging copies).
  virtual bool host_accessible() const = 0;

  // At least `bytes` bytes, aligned to 256; throws ResourceError naming the size when the device
  // has no room. free() takes the same byte count.
  virtual void* allocate(std::size_t bytes) = 0;
  virtual void free(void* pointer, std::size_t bytes) noexcept = 0;

  virtual void copy_to_device(void* dst, const void* host_src, std::size_t bytes) = 0;
  virtual void copy_to_host(void* host_dst, const void* src, std::size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, std::size_t bytes) = 0;  // device to device
  // rows x row_bytes from src (pitch src_pitch bytes) to dst (pitch dst_pitch), on the device.
  virtual void copy_rows(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                         std::size_t row_bytes, std::size_t rows) = 0;
  virtual void fill_zero(void* dst, std::size_t bytes) = 0;
  // Waits for everything issued so far.
  virtual void synchronize() = 0;

  // Bytes allocated now, and the most allocated at once since the last reset (the run's peak
  // device memory in metrics).
  virtual std::size_t allocated_bytes() const = 0;
  virtual std::size_t peak_allocated_bytes() const = 0;
  virtual void reset_peak() = 0;

  // A clock of the device's own for the profiler (Profiler::set_device_clock), where its work
  // runs apart from the host; null where the host's clock times it (the CPU).
  virtual std::unique_ptr<DeviceClock> make_clock() { return nullptr; }
};

// Host memory, OpenMP-parallel copies for large arrays.
class CpuDevice final : public Device {
 public:
  explicit CpuDevice(int threads) : threads_(threads) {}
  DeviceKind kind() const override { return DeviceKind::kCpu; }
  std::string name() const override { return "cpu"; }
  bool host_accessible() const override { return true; }
  void* allocate(std::size_t bytes) override;
  void free(void* pointer, std::size_t bytes) noexcept override;
  void copy_to_device(void* dst, const void* host_src, std::size_t bytes) override;
  void copy_to_host(void* host_dst, const void* src, std::size_t bytes) override;
  void copy(void* dst, const void* src, std::size_t bytes) override;
  void copy_rows(void* dst, std::size_t dst_pitch, const void* src, std::size_t src_pitch,
                 std::size_t row_bytes, std::size_t rows) override;
  void fill_zero(void* dst, std::size_t bytes) override;
  void synchronize() override {}
  std::size_t allocated_bytes() const override { return allocated_; }
  std::size_t peak_allocated_bytes() const override { return peak_; }
  void reset_peak() override { peak_ = allocated_; }

 private:
  int threads_;
  std::size_t allocated_ = 0, peak_ = 0;
};

// An owning, move-only array of T in a device's memory, grown on demand (like Buffer, whose
// contents are likewise left uninitialised). Remembers the device that allocated it.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Device& device, std::size_t count) { ensure(device, count); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : device_(std::exchange(other.device_, nullptr)),
        data_(std::exchange(other.data_, nullptr)),
        size_(std::exchange(other.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      release();
      device_ = std::exchange(other.device_, nullptr);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  ~DeviceBuffer() { release(); }

  // Room for at least `count` elements; old contents are discarded when it grows.
  T* ensure(Device& device, std::size_t count) {
    if (count > size_ || (device_ && device_ != &device)) {
      release();
      if (count > 0) {
        data_ = static_cast<T*>(device.allocate(count * sizeof(T)));
        device_ = &device;
        size_ = count;
      }
    }
    return data_;
  }
  void zero() {
    if (size_) device_->fill_zero(data_, bytes());
  }
  void release() noexcept {
    if (data_) device_->free(data_, bytes());
    data_ = nullptr;
    size_ = 0;
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t size() const { return size_; }
  std::size_t bytes() const { return size_ * sizeof(T); }
  bool empty() const { return size_ == 0; }

 private:
  Device* device_ = nullptr;
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

// dst (grown as needed) (=) the host values `src`.
template <class T>
void upload(Device& device, DeviceBuffer<T>& dst, std::span<const T> src) {
  dst.ensure(device, src.size());
  if (!src.empty()) device.copy_to_device(dst.data(), src.data(), src.size_bytes());
}

}  // namespace zerolora
