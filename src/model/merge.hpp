// Merging a LoRA adapter into its base model: W' = W + scale * B A for every adapted
// projection, written as a full Hugging Face checkpoint directory (safetensors shards of at
// most max_shard_bytes + model.safetensors.index.json, config.json, tokenizer files).
// Tensors are streamed one shard at a time (memory: one shard plus one tensor), into a
// temporary directory renamed into place at the end.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>

#include "core/dtype.hpp"
#include "core/runtime.hpp"
#include "io/checkpoint.hpp"
#include "lora/lora_layout.hpp"

namespace zerolora {

struct MergeReport {
  std::int64_t tensors = 0, merged = 0, shards = 0;
  std::uint64_t bytes = 0;
};

// out_dtype: F32, F16 or BF16. Throws UsageError if out_dir exists and is not empty.
MergeReport merge_lora_into_checkpoint(Runtime& rt, const Checkpoint& base,
                                       const LoraLayout& layout, std::span<const float> lora_params,
                                       const std::filesystem::path& out_dir,
                                       std::uint64_t max_shard_bytes, DType out_dtype);

}  // namespace zerolora
