// Model directories: single-file and sharded checkpoints, and every kind of bad directory
// (missing files, hostile index, tensors missing, mis-shaped or of an unsupported dtype).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "io/checkpoint.hpp"
#include "io/tensor_read.hpp"
#include "model/llama_weights.hpp"
#include "test_util.hpp"

namespace zerolora {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

class CheckpointTest : public ::testing::Test {
 protected:
  // A copy of a fixture model directory that the test may then damage.
  fs::path copy_fixture(const std::string& name) {
    const fs::path target = dir_ / name;
    fs::remove_all(target);
    fs::copy(testing::fixtures_dir() / name / "model", target, fs::copy_options::recursive);
    for (const auto& entry : fs::directory_iterator(target))
      fs::permissions(entry.path(), fs::perms::owner_read | fs::perms::owner_write);
    return target;
  }

  template <class E>
  void expect_load_error(const fs::path& model_dir, std::initializer_list<std::string> parts) {
    Runtime rt(1);
    try {
      Checkpoint checkpoint(model_dir);
      load_llama_weights<bf16>(rt, checkpoint);
      FAIL() << "loaded " << model_dir;
    } catch (const E& e) {
      const std::string message = e.what();
      for (const auto& part : parts) EXPECT_NE(message.find(part), std::string::npos) << message;
    } catch (const std::exception& e) {
      FAIL() << "wrong error type: " << e.what();
    }
  }

  testing::TempDir temp_;
  const fs::path& dir_ = temp_.path();
};

TEST_F(CheckpointTest, ShardedAndSingleFileLoadTheSameWay) {
  Runtime rt(2);
  Checkpoint sharded(testing::fixtures_dir() / "odd_untied_all" / "model");
  EXPECT_EQ(sharded.files().size(), 3u);
  auto weights = load_llama_weights<float>(rt, sharded);
  EXPECT_FALSE(weights.lm_head.empty());
  // Spot-check one tensor against a direct read.
  const auto located = sharded.at("model.layers.1.mlp.down_proj.weight");
  const auto direct = read_float_tensor<float>(*located.file, *located.info);
  const float* loaded = weights.layer_tensor(1, LayerTensor::kDown);
  for (std::size_t i = 0; i < direct.size(); ++i) ASSERT_EQ(loaded[i], direct[i]) << i;

  Checkpoint single(testing::fixtures_dir() / "gqa_tied" / "model");
  EXPECT_EQ(single.files().size(), 1u);
  const auto tied = load_llama_weights<bf16>(rt, single);
  EXPECT_TRUE(tied.lm_head.empty());
  EXPECT_EQ(tied.lm_head_weights(), tied.embedding.data());
}

TEST_F(CheckpointTest, MissingFilesAreNamed) {
  expect_load_error<IoError>(dir_ / "absent", {"not a directory"});
  fs::create_directories(dir_ / "empty");
  expect_load_error<IoError>(dir_ / "empty", {"no config.json"});
  const auto model = copy_fixture("gqa_tied");
  fs::remove(model / "model.safetensors");
  expect_load_error<IoError>(model, {"no model.safetensors"});
  std::ofstream(model / "pytorch_model.bin") << "pickle";
  expect_load_error<UnsupportedError>(model, {"pytorch_model.bin", "safetensors"});
}

TEST_F(CheckpointTest, HostileIndexIsRejected) {
  const auto model = copy_fixture("odd_untied_all");
  const auto index_path = model / "model.safetensors.index.json";
  json index = json::parse(std::ifstream(index_path));
  const auto pristine = index;
  index["weight_map"]["model.norm.weight"] = "../../etc/passwd";
  std::ofstream(index_path) << index.dump();
  expect_load_error<FormatError>(model, {"plain file name"});
  index = pristine;
  index["weight_map"]["model.norm.weight"] = "model-00009-of-00003.safetensors";
  std::ofstream(index_path) << index.dump();
  expect_load_error<IoError>(model, {"model-00009-of-00003.safetensors", "does not exist"});
  index = pristine;
  index["weight_map"]["model.norm.weight"] = "model-00001-of-00003.safetensors";
  std::ofstream(index_path) << index.dump();
  expect_load_error<FormatError>(model, {"model.norm.weight", "no such tensor"});
  std::ofstream(index_path) << "{not json";
  expect_load_error<FormatError>(model, {"model.safetensors.index.json", "not valid JSON"});
}

// Rewrites the fixture's model.safetensors with one tensor replaced (or dropped, or added).
void rewrite_tensor(const fs::path& file, const std::string& name, DType dtype,
                    std::vector<std::int64_t> shape, bool drop = false,
                    const std::string& extra = "") {
  SafetensorsFile original(file);
  SafetensorsWriter writer;
  for (const auto& t : original.tensors()) {
    if (t.name != name) {
      writer.add(t.name, t.dtype, t.shape, original.data(t));
    } else if (!drop) {
      std::int64_t n = 1;
      for (auto d : shape) n *= d;
      std::vector<std::byte> zeros(static_cast<std::size_t>(n) * dtype_size(dtype));
      writer.add(name, dtype, shape, zeros);
    }
  }
  if (!extra.empty()) {
    const std::vector<float> one{1.0f};
    writer.add<float>(extra, DType::kF32, {1}, one);
  }
  writer.write(file);
}

TEST_F(CheckpointTest, BadTensorsAreNamedWithFileAndExpectation) {
  auto model = copy_fixture("gqa_tied");
  const std::string q = "model.layers.1.self_attn.q_proj.weight";
  rewrite_tensor(model / "model.safetensors", q, DType::kBF16, {64, 63});
  expect_load_error<ShapeError>(model, {"model.safetensors", q, "[64, 63]", "needs [64, 64]"});

  model = copy_fixture("linear_rope");
  rewrite_tensor(model / "model.safetensors", "lm_head.weight", DType::kBF16, {}, true);
  expect_load_error<ShapeError>(model, {"lm_head.weight", "tie_word_embeddings is false"});

  model = copy_fixture("gqa_tied");
  rewrite_tensor(model / "model.safetensors", "model.norm.weight", DType::kI32, {64});
  expect_load_error<UnsupportedError>(model, {"model.norm.weight", "I32"});

  model = copy_fixture("gqa_tied");
  rewrite_tensor(model / "model.safetensors", "", DType::kF32, {}, false,
                 "model.layers.2.mlp.up_proj.weight");
  expect_load_error<ShapeError>(model, {"model.layers.2.mlp.up_proj.weight", "does not have"});
}

TEST_F(CheckpointTest, ConfigDisagreeingWithWeights) {
  const auto model = copy_fixture("gqa_tied");
  json config = json::parse(std::ifstream(model / "config.json"));
  config["intermediate_size"] = 100;
  std::ofstream(model / "config.json") << config.dump();
  expect_load_error<ShapeError>(model, {"mlp.gate_proj.weight", "intermediate_size 100"});
  config["model_type"] = "gpt2";
  std::ofstream(model / "config.json") << config.dump();
  expect_load_error<UnsupportedError>(model, {"config.json", "gpt2"});
  std::ofstream(model / "config.json") << "{";
  expect_load_error<FormatError>(model, {"config.json", "not valid JSON"});
}

}  // namespace
}  // namespace zerolora
