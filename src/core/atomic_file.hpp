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

// Creates `dir` (and its parents) when missing and proves it writable by creating and
// removing a probe file; throws IoError naming `dir`, `what` (e.g. "--output_dir") and the
// system's reason. For checking a destination before hours of work go into it.
void make_writable_directory(const std::filesystem::path& dir, std::string_view what);

// Convenience for small text files (JSON configs).
void write_text_file_atomically(const std::filesystem::path& path, std::string_view text);

}  // namespace zerolora
