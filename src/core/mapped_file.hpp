// Read-only memory map of a whole file (RAII). Only pages that are touched get read,
// which is what lets a rank load just its shard of a large checkpoint.
#pragma once

#include <cstddef>
#include <filesystem>
#include <span>

namespace zerolora {

class MappedFile {
 public:
  // Throws IoError naming the path when it cannot be opened or mapped.
  explicit MappedFile(const std::filesystem::path& path);
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  ~MappedFile();

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  // Tells the kernel this process is done with the pages wholly inside `range` (a sub-span of
  // bytes()): they leave this process's resident set; the file and page cache are untouched.
  void drop_pages(std::span<const std::byte> range) const;
  std::size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  void unmap() noexcept;

  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace zerolora
