// Must not build: io is below model, so a model header is not visible from io.
#include "io/safetensors.hpp"
#include "model/llama_model.hpp"
