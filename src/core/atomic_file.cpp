#include "core/atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "core/error.hpp"

namespace zerolora {
namespace {

class FdSink : public FileSink {
 public:
  FdSink(int fd, std::string label) : fd_(fd), label_(std::move(label)) {}
  using FileSink::write;
  void write(std::span<const std::byte> bytes) override {
    const std::byte* p = bytes.data();
    std::size_t left = bytes.size();
    while (left > 0) {
      const ssize_t n = ::write(fd_, p, left);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw IoError(label_ + ": write failed: " + std::strerror(errno));
      }
      p += n;
      left -= static_cast<std::size_t>(n);
    }
  }

 private:
  int fd_;
  std::string label_;
};

}  // namespace

void write_file_atomically(const std::filesystem::path& path,
                           const std::function<void(FileSink&)>& produce) {
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : ".";
  const std::filesystem::path temp =
      dir / (path.filename().string() + ".tmp-" + std::to_string(::getpid()));
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    throw IoError(path.string() + ": cannot create " + temp.string() + ": " + std::strerror(errno));
  bool closed = false;
  try {
    FdSink sink(fd, path.string());
    produce(sink);
    if (::fsync(fd) != 0) throw IoError(path.string() + ": fsync failed: " + std::strerror(errno));
    closed = true;
    if (::close(fd) != 0) throw IoError(path.string() + ": close failed: " + std::strerror(errno));
  } catch (...) {
    if (!closed) ::close(fd);
    std::error_code ignored;
    std::filesystem::remove(temp, ignored);
    throw;
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::error_code ignored;
    std::filesystem::remove(temp, ignored);
    throw IoError(path.string() + ": cannot rename temp file into place: " + std::strerror(err));
  }
  // Make the rename itself durable.
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

void make_writable_directory(const std::filesystem::path& dir, std::string_view what) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec)
    throw IoError(dir.string() + ": cannot create " + std::string(what) + ": " + ec.message());
  const std::filesystem::path probe = dir / (".zerolora-write-check-" + std::to_string(::getpid()));
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    throw IoError(dir.string() + ": " + std::string(what) +
                  " is not writable: " + std::strerror(errno));
  ::close(fd);
  std::filesystem::remove(probe, ec);
}

void write_text_file_atomically(const std::filesystem::path& path, std::string_view text) {
  write_file_atomically(path, [&](FileSink& sink) { sink.write(text); });
}

}  // namespace zerolora
