#include "io/tensor_read.hpp"

namespace zerolora {

std::vector<std::int64_t> read_int_tensor(const SafetensorsFile& file, const TensorInfo& tensor) {
  const std::byte* src = file.data(tensor).data();
  std::vector<std::int64_t> values(static_cast<std::size_t>(tensor.numel()));
  if (tensor.dtype == DType::kI64) {
    std::memcpy(values.data(), src, values.size() * sizeof(std::int64_t));
  } else if (tensor.dtype == DType::kI32) {
    for (std::size_t i = 0; i < values.size(); ++i) {
      std::int32_t v;
      std::memcpy(&v, src + i * sizeof(v), sizeof(v));
      values[i] = v;
    }
  } else {
    throw UnsupportedError(file.path().string() + ": tensor '" + tensor.name + "' has dtype " +
                           std::string(dtype_name(tensor.dtype)) + "; expected I32 or I64");
  }
  return values;
}

}  // namespace zerolora
