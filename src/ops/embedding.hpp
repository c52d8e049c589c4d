// Token embedding lookup. The table is a frozen base weight, so there is no backward.
#pragma once

#include <cstdint>

#include "core/bf16.hpp"
#include "core/runtime.hpp"
#include "ops/conventions.hpp"

namespace zerolora {

template <class T, class W>
void embedding_forward(Runtime& rt, T* dst /*[M, D]*/, const std::int32_t* tokens /*[M]*/,
                       const W* table /*[V, D]*/, Index M, Index D);

}  // namespace zerolora
