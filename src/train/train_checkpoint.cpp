#include "train/train_checkpoint.hpp"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/precision.hpp"
#include "io/json_file.hpp"
#include "io/safetensors.hpp"
#include "lora/peft_adapter.hpp"

namespace zerolora {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

std::string rank_file(int rank) {
  return "optimizer-rank" + std::to_string(rank) + ".safetensors";
}

}  // namespace

std::vector<std::pair<std::int64_t, fs::path>> list_checkpoints(const fs::path& output_dir) {
  std::vector<std::pair<std::int64_t, fs::path>> found;
  if (!fs::is_directory(output_dir)) return found;
  for (const auto& entry : fs::directory_iterator(output_dir)) {
    const std::string name = entry.path().filename().string();
    if (!entry.is_directory() || name.rfind("checkpoint-", 0) != 0) continue;
    const std::string digits = name.substr(11);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    found.emplace_back(std::stoll(digits), entry.path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

template <class P>
void save_training_checkpoint(Communicator& comm, const fs::path& output_dir, std::int64_t step,
                              const LoraLayout& layout, LoraTrainer<P>& trainer,
                              const RunSignature& signature, const std::string& base_model,
                              std::int64_t save_total_limit) {
  const fs::path final_dir = output_dir / ("checkpoint-" + std::to_string(step));
  const fs::path temp_dir = output_dir / ("checkpoint-" + std::to_string(step) + ".tmp");
  if (comm.rank() == 0) {
    fs::remove_all(temp_dir);
    fs::create_directories(temp_dir);
  }
  comm.barrier();
  SafetensorsWriter writer;
  trainer.write_state(writer);
  writer.write(temp_dir / rank_file(comm.rank()));
  const auto params = trainer.gather_params();  // collective
  if (comm.rank() == 0) {
    save_peft_adapter(temp_dir, layout, params, base_model);
    json state = {{"global_step", step},
                  {"world_size", comm.size()},
                  {"signature", signature.to_json()},
                  {"writer", "zerolora 0.1.0"}};
    write_text_file_atomically(temp_dir / "trainer_state.json", state.dump(2) + "\n");
  }
  comm.barrier();  // every rank's file is in place
  if (comm.rank() == 0) {
    fs::remove_all(final_dir);
    fs::rename(temp_dir, final_dir);
    if (save_total_limit > 0) {
      auto all = list_checkpoints(output_dir);
      while (static_cast<std::int64_t>(all.size()) > save_total_limit) {
        fs::remove_all(all.front().second);
        all.erase(all.begin());
      }
    }
  }
  comm.barrier();
}

ResumePoint read_resume_point(const fs::path& dir, const RunSignature& signature) {
  const fs::path state_path = dir / "trainer_state.json";
  if (!fs::exists(state_path))
    throw IoError(dir.string() + ": not a zerolora checkpoint (no trainer_state.json)");
  const json state = read_ordered_json_file(state_path);
  if (!state.contains("global_step") || !state.contains("world_size") ||
      !state.contains("signature"))
    throw FormatError(state_path.string() + ": missing global_step, world_size or signature");
  const int world = state["world_size"].get<int>();
  if (world < 1) throw FormatError(state_path.string() + ": world_size must be at least 1");
  const std::string differences = signature.resume_differences(state["signature"]);
  if (!differences.empty())
    throw ConfigError(
        dir.string() +
        " was written by a run with other settings; resuming would not continue it:" + differences);
  return {state["global_step"].get<std::int64_t>(), world};
}

template <class P>
void load_training_checkpoint(const fs::path& dir, const ResumePoint& point,
                              const LlamaConfig& base, const LoraLayout& layout,
                              LoraTrainer<P>& trainer) {
  const PeftAdapter adapter = load_peft_adapter(dir, base);
  if (static_cast<Index>(adapter.params.size()) != layout.size())
    throw ShapeError(dir.string() + ": the adapter's LoRA layout differs from this run's");
  // Every rank reads every rank's file (the LoRA optimizer state is small), so a checkpoint
  // resumes at any world size: the partitioned moments are resharded.
  std::vector<SafetensorsFile> files;
  for (int r = 0; r < point.world_size; ++r) {
    const fs::path file = dir / rank_file(r);
    if (!fs::exists(file))
      throw IoError(file.string() + ": missing (was the checkpoint copied whole?)");
    files.emplace_back(file);
  }
  trainer.read_state(files, adapter.params);
}

template void save_training_checkpoint<Fp32Policy>(Communicator&, const fs::path&, std::int64_t,
                                                   const LoraLayout&, LoraTrainer<Fp32Policy>&,
                                                   const RunSignature&, const std::string&,
                                                   std::int64_t);
template void save_training_checkpoint<Bf16Policy>(Communicator&, const fs::path&, std::int64_t,
                                                   const LoraLayout&, LoraTrainer<Bf16Policy>&,
                                                   const RunSignature&, const std::string&,
                                                   std::int64_t);
template void load_training_checkpoint<Fp32Policy>(const fs::path&, const ResumePoint&,
                                                   const LlamaConfig&, const LoraLayout&,
                                                   LoraTrainer<Fp32Policy>&);
template void load_training_checkpoint<Bf16Policy>(const fs::path&, const ResumePoint&,
                                                   const LlamaConfig&, const LoraLayout&,
                                                   LoraTrainer<Bf16Policy>&);

}  // namespace zerolora
