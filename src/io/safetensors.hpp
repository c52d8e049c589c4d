// safetensors (https://github.com/huggingface/safetensors) reader and writer.
// Layout: u64 little-endian header length N, N bytes of JSON header, then the data section.
// The reader memory-maps the file and validates everything before any tensor is used:
// header bounds, JSON shape, dtype names, shapes, offsets inside the data section, byte
// counts equal to numel x dtype size, tensors tiling the data section with no gap or
// overlap, and no duplicate keys. Every error names the file (and tensor).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/dtype.hpp"
#include "core/mapped_file.hpp"

namespace zerolora {

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;  // byte offsets inside the data section
  std::int64_t numel() const;
  std::string shape_string() const;  // "[4, 16]"
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // in header order
  std::map<std::string, std::string> metadata;
  std::uint64_t data_offset = 0;  // 8 + N
};

// Largest header accepted (the reference implementation's limit).
inline constexpr std::uint64_t kMaxSafetensorsHeader = 100'000'000;

// Validates a whole file image; `label` (the path) prefixes every error. Throws FormatError.
SafetensorsHeader parse_safetensors(std::span<const std::byte> file, const std::string& label);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return file_.path(); }
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  const TensorInfo* find(std::string_view name) const;
  // Throws ShapeError naming the file when the tensor is absent.
  const TensorInfo& at(std::string_view name) const;
  std::span<const std::byte> data(const TensorInfo& tensor) const;
  // Releases the resident pages of elements [first, first + count) of a tensor once read.
  void drop_pages(const TensorInfo& tensor, std::int64_t first, std::int64_t count) const;

 private:
  MappedFile file_;
  SafetensorsHeader header_;
  std::unordered_map<std::string, std::size_t> index_;
};

// Collects tensors, then writes them atomically (temp file + rename).
class SafetensorsWriter {
 public:
  // Copies the bytes; shape's numel x dtype size must equal bytes.size().
  void add(std::string name, DType dtype, std::vector<std::int64_t> shape,
           std::span<const std::byte> bytes);
  template <class T>
  void add(std::string name, DType dtype, std::vector<std::int64_t> shape,
           std::span<const T> values) {
    add(std::move(name), dtype, std::move(shape), std::as_bytes(values));
  }
  void set_metadata(std::string key, std::string value) {
    metadata_[std::move(key)] = std::move(value);
  }
  void write(const std::filesystem::path& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::byte> bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace zerolora
