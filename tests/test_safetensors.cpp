// safetensors reader/writer: round trips, interop with files written by the Python library
// (the fixtures), and hostile or truncated files, each of which must give one FormatError
// naming the file (and the tensor where there is one).
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "io/tensor_read.hpp"
#include "test_util.hpp"

namespace zerolora {
namespace {

namespace fs = std::filesystem;

class SafetensorsTest : public ::testing::Test {
 protected:
  // A file made of an 8-byte length (of `header`, unless overridden), the header, the data.
  fs::path raw(const std::string& header, const std::string& data,
               std::uint64_t length_field = ~0ull) {
    const fs::path path = dir_ / "raw.safetensors";
    std::ofstream out(path, std::ios::binary);
    const std::uint64_t n = length_field == ~0ull ? header.size() : length_field;
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
    out << header << data;
    return path;
  }

  // Expects FormatError whose message contains every one of `parts`.
  void expect_format_error(const fs::path& path, std::initializer_list<std::string> parts) {
    try {
      SafetensorsFile file(path);
      FAIL() << "no error for " << path;
    } catch (const FormatError& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find(path.string()), std::string::npos) << message;
      for (const auto& part : parts) EXPECT_NE(message.find(part), std::string::npos) << message;
    }
  }

  testing::TempDir temp_;
  const fs::path& dir_ = temp_.path();
};

TEST_F(SafetensorsTest, WriteThenReadRoundTrip) {
  const std::vector<float> a{1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -1e-3f};
  const std::vector<bf16> b{to_bf16(1.0f), to_bf16(-0.5f)};
  const std::vector<std::int64_t> c{1, -100, 3};
  SafetensorsWriter writer;
  writer.add<float>("a", DType::kF32, {2, 3}, a);
  writer.add<bf16>("nested.b", DType::kBF16, {2}, b);
  writer.add<std::int64_t>("c", DType::kI64, {3}, c);
  writer.add("empty", DType::kF32, {0, 4}, std::span<const std::byte>());
  writer.set_metadata("format", "pt");
  const fs::path path = dir_ / "out.safetensors";
  writer.write(path);

  SafetensorsFile file(path);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  ASSERT_EQ(file.tensors().size(), 4u);
  EXPECT_EQ(file.at("a").shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(read_float_tensor<float>(file, file.at("a")), a);
  const auto b_back = read_float_tensor<float>(file, file.at("nested.b"));
  EXPECT_EQ(b_back, (std::vector<float>{1.0f, -0.5f}));
  EXPECT_EQ(read_int_tensor(file, file.at("c")), c);
  EXPECT_EQ(file.at("empty").numel(), 0);
  EXPECT_EQ(file.find("missing"), nullptr);
  // The header is padded so the data section starts 8-byte aligned.
  std::ifstream in(path, std::ios::binary);
  std::uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
  // No temp files left behind.
  for (const auto& entry : fs::directory_iterator(dir_))
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
}

TEST_F(SafetensorsTest, ReadsFilesWrittenByThePythonLibrary) {
  SafetensorsFile file(testing::fixtures_dir() / "gqa_tied" / "model" / "model.safetensors");
  const auto& embed = file.at("model.embed_tokens.weight");
  EXPECT_EQ(embed.dtype, DType::kBF16);
  EXPECT_EQ(embed.shape, (std::vector<std::int64_t>{128, 64}));
  SafetensorsFile ref(testing::fixtures_dir() / "gqa_tied" / "reference.safetensors");
  EXPECT_EQ(ref.at("input_ids").dtype, DType::kI64);
  EXPECT_EQ(ref.metadata().at("lora_rank"), "4");
}

TEST_F(SafetensorsTest, F16ConvertsExactly) {
  // 1.0, -2.0, 65504 (max), 2^-24 (smallest subnormal), -0.0
  const std::vector<std::uint16_t> bits{0x3c00, 0xc000, 0x7bff, 0x0001, 0x8000};
  SafetensorsWriter writer;
  writer.add<std::uint16_t>("h", DType::kF16, {5}, bits);
  writer.write(dir_ / "h.safetensors");
  SafetensorsFile file(dir_ / "h.safetensors");
  const auto values = read_float_tensor<double>(file, file.at("h"));
  EXPECT_EQ(values, (std::vector<double>{1.0, -2.0, 65504.0, std::ldexp(1.0, -24), -0.0}));
}

TEST_F(SafetensorsTest, RejectsTruncatedAndHostileFiles) {
  const std::string good = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data(8, '\0');

  expect_format_error(raw("", "", 0), {"header length is 0"});
  {
    const fs::path tiny = dir_ / "tiny.safetensors";
    std::ofstream(tiny) << "abc";
    expect_format_error(tiny, {"fewer than the 8-byte header length"});
  }
  expect_format_error(raw(good, data, 1ull << 40), {"exceeds the limit"});
  expect_format_error(raw(good, data, good.size() + 100), {"runs past the end"});
  expect_format_error(raw(good, data.substr(0, 5)), {"'t'", "truncated"});
  expect_format_error(raw("[1,2]", ""), {"does not start with '{'"});
  expect_format_error(raw("{\"t\":", ""), {"not valid JSON"});
  expect_format_error(
      raw(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
          data),
      {"'t' more than once"});
  expect_format_error(
      raw(R"({"t":{"dtype":"F32","dtype":"I32","shape":[2],"data_offsets":[0,8]}})", data),
      {"'dtype' more than once"});
  expect_format_error(raw(R"({"t":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", data),
                      {"'t'", "unknown dtype 'Q4'"});
  expect_format_error(raw(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data),
                      {"'t'", "non-negative"});
  expect_format_error(raw(R"({"t":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", data),
                      {"'t'", "non-negative"});
  expect_format_error(raw(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data),
                      {"'t'", "needs 12"});
  expect_format_error(raw(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", data),
                      {"'t'", "end before"});
  expect_format_error(raw(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", data),
                      {"'t'", "two integers"});
  expect_format_error(raw(R"({"t":{"dtype":"F32","shape":[2]}})", data), {"'t'", "data_offsets"});
  expect_format_error(raw(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", data), {"'t'", "dtype"});
  expect_format_error(raw(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", data),
                      {"'t'", "unexpected field"});
  expect_format_error(raw(R"({"t":[1,2]})", data), {"'t'", "must be an object"});
  expect_format_error(
      raw(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})",
          data),
      {"'t'", "overflow"});
  // Overlap, gap, uncovered bytes.
  expect_format_error(
      raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
          data),
      {"overlaps"});
  expect_format_error(raw(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data),
                      {"'a'", "gap"});
  expect_format_error(raw(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", data),
                      {"cover 4 bytes", "has 8"});
  expect_format_error(raw(R"({"__metadata__":{"k":1}})", ""), {"__metadata__"});
  expect_format_error(raw(R"({"__metadata__":[]})", ""), {"__metadata__"});
}

TEST_F(SafetensorsTest, MissingFileIsAnIoError) {
  EXPECT_THROW(SafetensorsFile(dir_ / "nope.safetensors"), IoError);
  EXPECT_THROW(SafetensorsFile{dir_}, IoError);  // a directory
}

TEST_F(SafetensorsTest, FailedWriteKeepsThePreviousFile) {
  const fs::path path = dir_ / "keep.safetensors";
  std::ofstream(path) << "previous";
  try {
    write_file_atomically(path, [](FileSink& sink) {
      sink.write(std::string_view("partial"));
      throw IoError("simulated failure");
    });
  } catch (const IoError&) {
  }
  std::ifstream in(path);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "previous");
  for (const auto& entry : fs::directory_iterator(dir_))
    EXPECT_EQ(entry.path().filename().string().find(".tmp"), std::string::npos) << entry.path();
}

}  // namespace
}  // namespace zerolora
