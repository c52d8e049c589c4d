#include "train/run_outputs.hpp"

#include <exception>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "core/atomic_file.hpp"
#include "core/error.hpp"

namespace zerolora {

namespace fs = std::filesystem;

bool is_run_output(const fs::path& path) {
  const std::string name = path.filename().string();
  return name.rfind("checkpoint-", 0) == 0 || name == "adapter_config.json" ||
         name == "adapter_model.safetensors" || name == "metrics.jsonl" ||
         name == "loss_curve.svg" || name == "train_results.json";
}

namespace {

// The run outputs and the other entries of an output directory (none when resuming: the
// directory is the run's own).
struct DirContents {
  std::vector<fs::path> ours, theirs;
};

DirContents read_output_dir(const fs::path& dir, bool resuming) {
  DirContents contents;
  if (fs::exists(dir) && !fs::is_directory(dir))
    throw UsageError(dir.string() + ": --output_dir is a file");
  if (!resuming && fs::is_directory(dir))
    for (const auto& entry : fs::directory_iterator(dir))
      (is_run_output(entry.path()) ? contents.ours : contents.theirs).push_back(entry.path());
  return contents;
}

[[noreturn]] void throw_output_dir_error(const fs::path& dir, const fs::filesystem_error& e) {
  throw IoError(dir.string() + ": --output_dir: " + e.code().message() +
                (e.path1().empty() || e.path1() == dir ? "" : " (" + e.path1().string() + ")"));
}

}  // namespace

void check_output_dir(const fs::path& dir, bool overwrite, bool resuming) {
  try {
    const DirContents contents = read_output_dir(dir, resuming);
    if (!contents.theirs.empty())
      throw UsageError(dir.string() + ": --output_dir holds files zerolora did not write (e.g. " +
                       contents.theirs.front().filename().string() +
                       "); choose an empty or new directory");
    if (!contents.ours.empty() && !overwrite)
      throw UsageError(dir.string() + ": --output_dir already holds a training run (" +
                       contents.ours.front().filename().string() +
                       "); pass --resume_from_checkpoint last to continue it, or "
                       "--overwrite_output_dir to start over");
  } catch (const fs::filesystem_error& e) {
    throw_output_dir_error(dir, e);
  }
}

void prepare_output_dir(const fs::path& dir, bool overwrite, bool resuming) {
  try {
    const DirContents contents = read_output_dir(dir, resuming);
    // Writable before anything is removed, and before the model is read.
    make_writable_directory(dir, "--output_dir");
    if (overwrite)
      for (const auto& p : contents.ours) fs::remove_all(p);
  } catch (const fs::filesystem_error& e) {
    throw_output_dir_error(dir, e);
  }
}

void prepare_output_dir_on_all_ranks(Communicator& comm, const fs::path& dir, bool overwrite,
                                     bool resuming) {
  check_output_dir(dir, overwrite, resuming);
  comm.barrier();  // every rank has looked before rank 0 writes its probe file
  std::exception_ptr failed;
  if (comm.rank() == 0) try {
      prepare_output_dir(dir, overwrite, resuming);
    } catch (...) {
      failed = std::current_exception();
    }
  if (comm.all_reduce_sum<std::int64_t>(failed ? 1 : 0) > 0) {
    if (failed) std::rethrow_exception(failed);
    throw IoError(dir.string() + ": rank 0 could not prepare --output_dir");
  }
}

MetricsHistory keep_metrics_until(const fs::path& log_path, std::int64_t step) {
  MetricsHistory history;
  if (!fs::exists(log_path)) return history;
  std::ifstream in(log_path);
  std::string kept;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("step") || j["step"].get<std::int64_t>() > step) continue;
    kept += line + "\n";
    if (j.contains("loss"))
      history.train.push_back({j["step"].get<double>(), j["loss"].get<double>()});
    if (j.contains("eval_loss"))
      history.eval.push_back({j["step"].get<double>(), j["eval_loss"].get<double>()});
  }
  write_text_file_atomically(log_path, kept);
  return history;
}

}  // namespace zerolora
