// Small types every layer shares.
#pragma once

#include <cstdint>

namespace zerolora {

// Sizes, counts and offsets of tensors and data: signed, 64-bit.
using Index = std::int64_t;

// A label that contributes no loss (HF's -100): masked prompt tokens, padding.
inline constexpr std::int32_t kIgnoreIndex = -100;

}  // namespace zerolora
