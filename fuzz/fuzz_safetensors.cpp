// libFuzzer target for the safetensors header parser: any byte string must either parse into
// a header whose tensors lie inside the data section, or throw FormatError. Anything else
// (crash, other exception, out-of-bounds offsets) is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  try {
    const auto header = zerolora::parse_safetensors(bytes, "fuzz-input");
    const std::uint64_t data_size = size - header.data_offset;
    for (const auto& t : header.tensors) {
      if (t.begin > t.end || t.end > data_size) std::abort();
      if (static_cast<std::uint64_t>(t.numel()) * zerolora::dtype_size(t.dtype) != t.end - t.begin)
        std::abort();
    }
  } catch (const zerolora::FormatError&) {
  }
  return 0;
}
