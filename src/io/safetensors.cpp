#include "io/safetensors.hpp"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "core/atomic_file.hpp"
#include "core/error.hpp"

namespace zerolora {
namespace {

using json = nlohmann::json;

[[noreturn]] void fail(const std::string& label, const std::string& what) {
  throw FormatError(label + ": invalid safetensors file: " + what);
}

std::uint64_t read_u64_le(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<std::uint64_t>(p[i]);
  return v;
}

// Parses JSON, rejecting duplicate keys at any depth (nlohmann would keep the last silently,
// and two readers could then disagree about the same file).
json parse_json_unique_keys(std::string_view text, const std::string& label) {
  std::vector<std::unordered_set<std::string>> open_objects;
  std::string duplicate;
  json::parser_callback_t callback = [&](int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open_objects.empty() &&
            !open_objects.back().insert(parsed.get<std::string>()).second && duplicate.empty())
          duplicate = parsed.get<std::string>();
        break;
      default:
        break;
    }
    return true;
  };
  json parsed;
  try {
    parsed = json::parse(text.begin(), text.end(), callback);
  } catch (const json::exception& e) {
    fail(label, std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (!duplicate.empty()) fail(label, "header has the key '" + duplicate + "' more than once");
  return parsed;
}

std::uint64_t checked_mul(std::uint64_t a, std::uint64_t b, const std::string& label,
                          const std::string& tensor) {
  std::uint64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r))
    fail(label, "tensor '" + tensor + "': size overflows 64 bits");
  return r;
}

TensorInfo parse_tensor_entry(const std::string& name, const json& entry,
                              const std::string& label) {
  const std::string where = "tensor '" + name + "': ";
  if (!entry.is_object()) fail(label, where + "entry must be an object");
  for (const auto& [key, value] : entry.items())
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      fail(label, where + "unexpected field '" + key + "'");
  if (!entry.contains("dtype") || !entry["dtype"].is_string())
    fail(label, where + "missing string field 'dtype'");
  if (!entry.contains("shape") || !entry["shape"].is_array())
    fail(label, where + "missing array field 'shape'");
  if (!entry.contains("data_offsets") || !entry["data_offsets"].is_array() ||
      entry["data_offsets"].size() != 2)
    fail(label, where + "'data_offsets' must be an array of two integers");

  TensorInfo info;
  info.name = name;
  const auto dtype_text = entry["dtype"].get<std::string>();
  const auto dtype = parse_dtype(dtype_text);
  if (!dtype) fail(label, where + "unknown dtype '" + dtype_text + "'");
  info.dtype = *dtype;

  std::uint64_t numel = 1;
  for (const auto& dim : entry["shape"]) {
    if (!dim.is_number_unsigned())
      fail(label, where + "shape entries must be non-negative integers");
    const std::uint64_t d = dim.get<std::uint64_t>();
    if (d > (std::uint64_t{1} << 62)) fail(label, where + "shape entry too large");
    numel = checked_mul(numel, d, label, name);
    info.shape.push_back(static_cast<std::int64_t>(d));
  }
  for (const auto& offset : entry["data_offsets"])
    if (!offset.is_number_unsigned())
      fail(label, where + "data_offsets must be non-negative integers");
  info.begin = entry["data_offsets"][0].get<std::uint64_t>();
  info.end = entry["data_offsets"][1].get<std::uint64_t>();
  if (info.end < info.begin) fail(label, where + "data_offsets end before they begin");
  const std::uint64_t bytes = checked_mul(numel, dtype_size(info.dtype), label, name);
  if (bytes > (std::uint64_t{1} << 62)) fail(label, where + "tensor too large");
  if (info.end - info.begin != bytes)
    fail(label, where + "data_offsets [" + std::to_string(info.begin) + ", " +
                    std::to_string(info.end) + "] hold " + std::to_string(info.end - info.begin) +
                    " bytes, but " + std::string(dtype_name(info.dtype)) + " " +
                    info.shape_string() + " needs " + std::to_string(bytes));
  return info;
}

}  // namespace

std::int64_t TensorInfo::numel() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string TensorInfo::shape_string() const {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

SafetensorsHeader parse_safetensors(std::span<const std::byte> file, const std::string& label) {
  if (file.size() < 8)
    fail(label, "file has " + std::to_string(file.size()) +
                    " bytes, fewer than the 8-byte header length field");
  const std::uint64_t header_len = read_u64_le(file.data());
  if (header_len == 0) fail(label, "header length is 0");
  if (header_len > kMaxSafetensorsHeader)
    fail(label, "header length " + std::to_string(header_len) + " exceeds the limit of " +
                    std::to_string(kMaxSafetensorsHeader) + " bytes");
  if (header_len > file.size() - 8)
    fail(label, "header length " + std::to_string(header_len) + " runs past the end of the " +
                    std::to_string(file.size()) + "-byte file (truncated?)");
  const std::string_view text(reinterpret_cast<const char*>(file.data() + 8), header_len);
  if (text.front() != '{') fail(label, "header does not start with '{'");

  const json root = parse_json_unique_keys(text, label);
  if (!root.is_object()) fail(label, "header must be a JSON object");

  SafetensorsHeader header;
  header.data_offset = 8 + header_len;
  const std::uint64_t data_size = file.size() - header.data_offset;
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) fail(label, "__metadata__ must be an object of strings");
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string()) fail(label, "__metadata__['" + mkey + "'] must be a string");
        header.metadata[mkey] = mvalue.get<std::string>();
      }
      continue;
    }
    header.tensors.push_back(parse_tensor_entry(key, value, label));
  }

  // The tensors must tile the data section exactly: sorted by offset, no gaps, no overlaps.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : header.tensors) by_offset.push_back(&t);
  std::stable_sort(by_offset.begin(), by_offset.end(),
                   [](const TensorInfo* a, const TensorInfo* b) {
                     return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
                   });
  std::uint64_t expected = 0;
  for (const TensorInfo* t : by_offset) {
    if (t->end > data_size)
      fail(label, "tensor '" + t->name + "': data_offsets end at " + std::to_string(t->end) +
                      " but the data section has only " + std::to_string(data_size) +
                      " bytes (truncated file?)");
    if (t->begin != expected)
      fail(label, "tensor '" + t->name + "': data starts at byte " + std::to_string(t->begin) +
                      ", expected " + std::to_string(expected) +
                      (t->begin < expected ? " (overlaps the previous tensor)" : " (gap)"));
    expected = t->end;
  }
  if (expected != data_size)
    fail(label, "tensors cover " + std::to_string(expected) + " bytes but the data section has " +
                    std::to_string(data_size));
  return header;
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path)
    : file_(path), header_(parse_safetensors(file_.bytes(), path.string())) {
  for (std::size_t i = 0; i < header_.tensors.size(); ++i)
    index_.emplace(header_.tensors[i].name, i);
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

const TensorInfo& SafetensorsFile::at(std::string_view name) const {
  const TensorInfo* info = find(name);
  if (!info) throw ShapeError(path().string() + ": has no tensor '" + std::string(name) + "'");
  return *info;
}

std::span<const std::byte> SafetensorsFile::data(const TensorInfo& tensor) const {
  return file_.bytes().subspan(header_.data_offset + tensor.begin, tensor.end - tensor.begin);
}

void SafetensorsFile::drop_pages(const TensorInfo& tensor, std::int64_t first,
                                 std::int64_t count) const {
  const auto size = static_cast<std::int64_t>(dtype_size(tensor.dtype));
  file_.drop_pages(data(tensor).subspan(static_cast<std::size_t>(first * size),
                                        static_cast<std::size_t>(count * size)));
}

void SafetensorsWriter::add(std::string name, DType dtype, std::vector<std::int64_t> shape,
                            std::span<const std::byte> bytes) {
  std::int64_t numel = 1;
  for (auto d : shape) {
    ZL_CHECK(d >= 0);
    numel *= d;
  }
  ZL_CHECK(static_cast<std::size_t>(numel) * dtype_size(dtype) == bytes.size());
  for (const auto& e : entries_) ZL_CHECK(e.name != name);
  ZL_CHECK(name != "__metadata__");
  entries_.push_back({std::move(name), dtype, std::move(shape), {bytes.begin(), bytes.end()}});
}

void SafetensorsWriter::write(const std::filesystem::path& path) const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    auto& meta = header["__metadata__"];
    for (const auto& [k, v] : metadata_) meta[k] = v;
  }
  std::uint64_t offset = 0;
  for (const auto& e : entries_) {
    header[e.name] = {{"dtype", std::string(dtype_name(e.dtype))},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + e.bytes.size()}}};
    offset += e.bytes.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // pad so the data section is 8-byte aligned
  std::byte length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<std::byte>((text.size() >> (8 * i)) & 0xff);
  write_file_atomically(path, [&](FileSink& sink) {
    sink.write(std::span<const std::byte>(length, 8));
    sink.write(text);
    for (const auto& e : entries_) sink.write(std::span<const std::byte>(e.bytes));
  });
}

}  // namespace zerolora
