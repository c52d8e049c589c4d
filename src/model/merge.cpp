#include "model/merge.hpp"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "core/atomic_file.hpp"
#include "core/bf16.hpp"
#include "core/error.hpp"
#include "io/json_file.hpp"
#include "model/llama_weights.hpp"
#include "ops/matmul.hpp"

namespace zerolora {
namespace {

namespace fs = std::filesystem;

// The LoRA module a base tensor is the weight of, if any.
std::optional<LoraModule> adapted_module(const ParamEntry& entry) {
  if (!entry.tensor) return std::nullopt;
  switch (*entry.tensor) {
    case LayerTensor::kQ:
      return LoraModule::kQ;
    case LayerTensor::kK:
      return LoraModule::kK;
    case LayerTensor::kV:
      return LoraModule::kV;
    case LayerTensor::kO:
      return LoraModule::kO;
    case LayerTensor::kGate:
      return LoraModule::kGate;
    case LayerTensor::kUp:
      return LoraModule::kUp;
    case LayerTensor::kDown:
      return LoraModule::kDown;
    default:
      return std::nullopt;
  }
}

std::uint16_t float_to_half_bits(float f) {
  // IEEE binary16, round to nearest even.
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u)
    return static_cast<std::uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0));
  if (abs >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // overflow to inf
  if (abs < 0x38800000u) {                                                    // subnormal or zero
    const float scaled = std::bit_cast<float>(abs) * 16777216.0f;             // 2^24
    return static_cast<std::uint16_t>(sign | static_cast<std::uint32_t>(std::nearbyint(scaled)));
  }
  std::uint32_t mantissa = abs + 0xc8000fffu + ((abs >> 13) & 1u);  // rebias exponent, round
  return static_cast<std::uint16_t>(sign | (mantissa >> 13));
}

std::vector<std::byte> encode(std::span<const float> values, DType dtype) {
  std::vector<std::byte> out(values.size() * dtype_size(dtype));
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(out.data() + 4 * i, &values[i], 4);
    } else {
      const std::uint16_t bits =
          dtype == DType::kBF16 ? to_bf16(values[i]).bits : float_to_half_bits(values[i]);
      std::memcpy(out.data() + 2 * i, &bits, 2);
    }
  }
  return out;
}

void copy_if_present(const fs::path& from, const fs::path& to) {
  if (fs::exists(from)) fs::copy_file(from, to, fs::copy_options::overwrite_existing);
}

}  // namespace

MergeReport merge_lora_into_checkpoint(Runtime& rt, const Checkpoint& base,
                                       const LoraLayout& layout, std::span<const float> lora_params,
                                       const fs::path& out_dir, std::uint64_t max_shard_bytes,
                                       DType out_dtype) {
  if (out_dtype != DType::kF32 && out_dtype != DType::kF16 && out_dtype != DType::kBF16)
    throw UsageError("merged weights can be F32, F16 or BF16");
  if (fs::exists(out_dir) && !(fs::is_directory(out_dir) && fs::is_empty(out_dir)))
    throw UsageError(out_dir.string() +
                     ": already exists and is not empty; merge writes a new model directory");
  // Where the new directory goes must take writes, before any tensor is merged.
  make_writable_directory(fs::absolute(out_dir).parent_path(), "the parent of --output_dir");
  const auto table = validate_checkpoint(base);
  const LlamaConfig& config = base.config();
  const double scale = layout.config().scale();

  // Plan the shards from the tensor sizes, so file names can say "-of-N" up front.
  std::vector<int> shard_of(table.size());
  int shards = 1;
  std::uint64_t in_shard = 0, total = 0;
  for (std::size_t t = 0; t < table.size(); ++t) {
    const std::uint64_t bytes =
        static_cast<std::uint64_t>(table[t].numel()) * dtype_size(out_dtype);
    if (in_shard > 0 && in_shard + bytes > max_shard_bytes) {
      ++shards;
      in_shard = 0;
    }
    shard_of[t] = shards - 1;
    in_shard += bytes;
    total += bytes;
  }
  auto shard_name = [&](int s) {
    if (shards == 1) return std::string("model.safetensors");
    char name[64];
    std::snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", s + 1, shards);
    return std::string(name);
  };

  const fs::path temp = out_dir.string() + ".tmp-merge";
  fs::remove_all(temp);
  make_writable_directory(temp, "the temporary directory of --output_dir");
  MergeReport report;
  report.shards = shards;
  report.bytes = total;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  SafetensorsWriter writer;
  std::vector<float> values, delta;
  for (std::size_t t = 0; t < table.size(); ++t) {
    const ParamEntry& entry = table[t];
    values.resize(static_cast<std::size_t>(entry.numel()));
    read_checkpoint_elements(rt, base, entry, 0, entry.numel(), values.data());
    if (const auto module = adapted_module(entry); module && layout.adapter(entry.layer, *module)) {
      const LoraAdapterSlots* slot = layout.adapter(entry.layer, *module);
      const Index r = layout.config().rank;
      delta.resize(values.size());
      matmul<float, float>(
          rt, Mat<const float>::dense(lora_params.data() + slot->b_offset, slot->out, r),
          Mat<const float>::dense(lora_params.data() + slot->a_offset, r, slot->in),
          Mat<float>::dense(delta.data(), slot->out, slot->in), scale);
      for (std::size_t i = 0; i < values.size(); ++i) values[i] += delta[i];
      ++report.merged;
    }
    const auto bytes = encode(values, out_dtype);
    writer.add(entry.name, out_dtype, entry.shape, bytes);
    weight_map[entry.name] = shard_name(shard_of[t]);
    ++report.tensors;
    if (t + 1 == table.size() || shard_of[t + 1] != shard_of[t]) {
      writer.set_metadata("format", "pt");
      writer.write(temp / shard_name(shard_of[t]));
      writer = SafetensorsWriter{};
    }
  }
  if (shards > 1) {
    const nlohmann::ordered_json index{{"metadata", {{"total_size", total}}},
                                       {"weight_map", weight_map}};
    write_text_file_atomically(temp / "model.safetensors.index.json", index.dump(2) + "\n");
  }
  // config.json as the base's, with the dtype of the merged weights.
  auto json = read_ordered_json_file(base.dir() / "config.json");
  const char* dtype_name_hf = out_dtype == DType::kF32   ? "float32"
                              : out_dtype == DType::kF16 ? "float16"
                                                         : "bfloat16";
  json[json.contains("dtype") ? "dtype" : "torch_dtype"] = dtype_name_hf;
  write_text_file_atomically(temp / "config.json", json.dump(2) + "\n");
  for (const char* file : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                           "special_tokens_map.json", "generation_config.json"})
    copy_if_present(base.dir() / file, temp / file);
  (void)config;
  if (fs::exists(out_dir)) fs::remove(out_dir);  // empty, checked above
  fs::rename(temp, out_dir);
  return report;
}

}  // namespace zerolora
