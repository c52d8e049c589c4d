// Precision policies: which type activations use and which type base weights (and hence
// matmul operands) use. The model code is written once as templates over a policy.
#pragma once

#include <string_view>

#include "core/bf16.hpp"

namespace zerolora {

// Weights and compute in fp32: for exact comparison with the PyTorch reference.
struct Fp32Policy {
  using Act = float;
  using Weight = float;
  static constexpr std::string_view kName = "fp32";
};

// Weights in bf16, matmuls in bf16 with fp32 accumulation, everything else fp32: the default.
struct Bf16Policy {
  using Act = float;
  using Weight = bf16;
  static constexpr std::string_view kName = "bf16";
};

// Everything in double: for finite-difference gradient checks only.
struct Fp64Policy {
  using Act = double;
  using Weight = double;
  static constexpr std::string_view kName = "fp64";
};

enum class Precision { kFp32, kBf16 };

}  // namespace zerolora
