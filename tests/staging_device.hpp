// A test device: host memory that the model and the ZeRO-3 store must treat as a device's
// (host_accessible false), counting the copies through the Device interface. It runs the CPU
// kernels (kind kCpu), so every path a GPU takes through the seam runs on the CPU here.
#pragma once

#include <limits>
#include <string>

#include "core/device.hpp"

namespace zerolora::testing {

// New allocations are NaN-filled, so that reading memory never written shows.
class StagingDevice final : public Device {
 public:
  DeviceKind kind() const override { return DeviceKind::kCpu; }  // runs the CPU kernels
  std::string name() const override { return "staging"; }
  bool host_accessible() const override { return false; }
  void* allocate(std::size_t bytes) override {
    void* p = inner_.allocate(bytes);
    auto* f = static_cast<float*>(p);
    for (std::size_t i = 0; i < bytes / sizeof(float); ++i)
      f[i] = std::numeric_limits<float>::quiet_NaN();
    return p;
  }
  void free(void* p, std::size_t bytes) noexcept override { inner_.free(p, bytes); }
  void copy_to_device(void* d, const void* s, std::size_t n) override {
    ++uploads;
    inner_.copy_to_device(d, s, n);
  }
  void copy_to_host(void* d, const void* s, std::size_t n) override {
    ++downloads;
    inner_.copy_to_host(d, s, n);
  }
  void copy(void* d, const void* s, std::size_t n) override { inner_.copy(d, s, n); }
  void copy_rows(void* d, std::size_t dp, const void* s, std::size_t sp, std::size_t rb,
                 std::size_t rows) override {
    inner_.copy_rows(d, dp, s, sp, rb, rows);
  }
  void fill_zero(void* d, std::size_t n) override { inner_.fill_zero(d, n); }
  void synchronize() override {}
  std::size_t allocated_bytes() const override { return inner_.allocated_bytes(); }
  std::size_t peak_allocated_bytes() const override { return inner_.peak_allocated_bytes(); }
  void reset_peak() override { inner_.reset_peak(); }
  int uploads = 0, downloads = 0;

 private:
  CpuDevice inner_{2};
};

}  // namespace zerolora::testing
