// The output directory of a training run: what a run writes there, when it may start in it,
// and the metrics history a resumed run continues.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "comm/communicator.hpp"
#include "train/metrics.hpp"

namespace zerolora {

// A file or directory a training run writes into its output directory (and may replace with
// overwrite_output_dir): checkpoint-*, the adapter, metrics.jsonl, loss_curve.svg,
// train_results.json.
bool is_run_output(const std::filesystem::path& path);

// Refuses (UsageError) an output directory that is a file, that holds files a run did not
// write, or that holds an earlier run unless `overwrite` or `resuming`. Reads only: every
// rank may call it, and all must have before anyone calls prepare_output_dir (which writes a
// probe file that another rank's look would take for a stranger's).
void check_output_dir(const std::filesystem::path& dir, bool overwrite, bool resuming);

// After check_output_dir, on one rank: creates the directory, proves it writable (IoError
// naming the path and the reason), and with `overwrite` (not resuming) removes the earlier
// run's outputs.
void prepare_output_dir(const std::filesystem::path& dir, bool overwrite, bool resuming);

// Both, for a run on many ranks (collective): every rank checks, then rank 0 prepares; a
// failure on rank 0 ends every rank alike (never one rank waiting in a collective).
void prepare_output_dir_on_all_ranks(Communicator& comm, const std::filesystem::path& dir,
                                     bool overwrite, bool resuming);

// On resume: metrics.jsonl is cut back to the records up to `step` (rewritten atomically), and
// the loss curves those records draw are returned.
struct MetricsHistory {
  std::vector<CurvePoint> train, eval;
};
MetricsHistory keep_metrics_until(const std::filesystem::path& log_path, std::int64_t step);

}  // namespace zerolora
