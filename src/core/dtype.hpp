// Element types of tensors in files (safetensors names) and their sizes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace zerolora {

enum class DType : std::uint8_t {
  kBool,
  kU8,
  kI8,
  kU16,
  kI16,
  kF16,
  kBF16,
  kU32,
  kI32,
  kF32,
  kU64,
  kI64,
  kF64,
  kF8E4M3,
  kF8E5M2,
};

// The safetensors spelling ("BF16", "F32", ...).
std::string_view dtype_name(DType dtype);
// Parses a safetensors dtype name; nullopt for an unknown name.
std::optional<DType> parse_dtype(std::string_view name);
std::size_t dtype_size(DType dtype);

}  // namespace zerolora
