// Builds: the io layer may include its own headers and those of the layers below it.
#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "ops/rope.hpp"
