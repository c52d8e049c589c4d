// Reading safetensors data into typed arrays, converting F32/F16/BF16/F64 on the way.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "core/bf16.hpp"
#include "core/error.hpp"
#include "io/safetensors.hpp"

namespace zerolora {

// Converts `count` elements starting at element `first` of a floating-point tensor into T
// (float, double or bf16). The source may be unaligned (it is a mapped file).
template <class T>
void read_float_elements(const SafetensorsFile& file, const TensorInfo& tensor, std::int64_t first,
                         std::int64_t count, T* dst) {
  ZL_CHECK(first >= 0 && count >= 0 && first + count <= tensor.numel());
  const std::byte* src = file.data(tensor).data();
  auto load = [src](std::int64_t i, auto tag) {
    decltype(tag) v;
    std::memcpy(&v, src + i * static_cast<std::int64_t>(sizeof(v)), sizeof(v));
    return v;
  };
  switch (tensor.dtype) {
    case DType::kF32:
      for (std::int64_t i = 0; i < count; ++i) dst[i] = convert_to<T>(load(first + i, float{}));
      break;
    case DType::kF64:
      for (std::int64_t i = 0; i < count; ++i) dst[i] = convert_to<T>(load(first + i, double{}));
      break;
    case DType::kBF16:
      for (std::int64_t i = 0; i < count; ++i) {
        const bf16 v{load(first + i, std::uint16_t{})};
        if constexpr (std::is_same_v<T, bf16>)
          dst[i] = v;
        else
          dst[i] = static_cast<T>(to_float(v));
      }
      break;
    case DType::kF16:
      for (std::int64_t i = 0; i < count; ++i)
        dst[i] = convert_to<T>(half_bits_to_float(load(first + i, std::uint16_t{})));
      break;
    default:
      throw UnsupportedError(file.path().string() + ": tensor '" + tensor.name + "' has dtype " +
                             std::string(dtype_name(tensor.dtype)) +
                             "; floating-point tensors must be F32, F16, BF16 or F64");
  }
}

template <class T>
std::vector<T> read_float_tensor(const SafetensorsFile& file, const TensorInfo& tensor) {
  std::vector<T> values(static_cast<std::size_t>(tensor.numel()));
  read_float_elements(file, tensor, 0, tensor.numel(), values.data());
  return values;
}

// Integer tensors (I32/I64), e.g. token ids in fixtures.
std::vector<std::int64_t> read_int_tensor(const SafetensorsFile& file, const TensorInfo& tensor);

}  // namespace zerolora
