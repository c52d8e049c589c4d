// libFuzzer target for the training-data readers (JSON array, wrapped JSON objects, JSON Lines,
// text lines): any file must either read into records or throw FormatError / UsageError
// naming the file. Anything else (crash, another exception type, a hang) is a bug. The first
// byte picks the file type; the rest is the file.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.hpp"
#include "data/records.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  static const char* const kExtensions[] = {".json", ".jsonl", ".txt"};
  const std::filesystem::path file =
      std::filesystem::temp_directory_path() /
      ("zerolora-fuzz-records-" + std::to_string(::getpid()) + kExtensions[data[0] % 3]);
  {
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data + 1), static_cast<std::streamsize>(size - 1));
  }
  for (const auto kind : {zerolora::RecordKind::kInstruction, zerolora::RecordKind::kText}) {
    try {
      const auto set = zerolora::read_records(file, kind);
      if (set.read < static_cast<std::int64_t>(set.records.size())) std::abort();
      for (const auto& r : set.records)
        if (r.output.empty()) std::abort();  // empty outputs are skipped and counted
    } catch (const zerolora::FormatError& e) {
      if (std::string(e.what()).find(file.string()) == std::string::npos) std::abort();
    } catch (const zerolora::UsageError&) {  // .txt in instruction mode
    }
  }
  std::filesystem::remove(file);
  return 0;
}
