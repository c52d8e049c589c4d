// Writing files so that readers never see a half-written one: write `path.tmp-<pid>` in the
// same directory, fsync, rename over `path`. On any failure the temp file is removed and the
// previous `path` (if any) is untouched.
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <span>
#include <string_view>

namespace zerolora {

// Sink handed to the producer; write() throws IoError on failure.
class FileSink {
 public:
  virtual ~FileSink() = default;
  virtual void write(std::span<const std::byte> bytes) = 0;
  void write(std::string_view text) {
    write(std::span<const std::byte>(reinterpret_cast<const std::byte*>(text.data()), text.size()));
  }
};

void write_file_atomically(const std::filesystem::path& path,
                           const std::function<void(FileSink&)>& produce);

// Convenience for small text files (JSON configs).
void write_text_file_atomically(const std::filesystem::path& path, std::string_view text);

}  // namespace zerolora
