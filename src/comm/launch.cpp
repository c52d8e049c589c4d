#include "comm/launch.hpp"

#include <charconv>
#include <cstdlib>
#include <optional>
#include <vector>

#include "core/error.hpp"

namespace zerolora {
namespace {

class EnvironmentReader {
 public:
  explicit EnvironmentReader(const Environment& environment) : environment_(environment) {}

  const char* text(const char* name) const {
    const char* value = environment_ ? environment_(name) : std::getenv(name);
    return value && *value ? value : nullptr;
  }
  bool has(const char* name) const { return text(name) != nullptr; }

  // The variable as a non-negative integer, or nothing when it is unset; recorded as evidence.
  std::optional<int> integer(const char* name) {
    const char* value = text(name);
    if (!value) return std::nullopt;
    int parsed = -1;
    const char* end = value + std::char_traits<char>::length(value);
    const auto [at, error] = std::from_chars(value, end, parsed);
    if (error != std::errc() || at != end || parsed < 0)
      throw ConfigError(std::string("the environment variable ") + name + "=" + value +
                        " is not a rank count or index");
    evidence_ += (evidence_.empty() ? "" : ", ") + std::string(name) + "=" + value;
    return parsed;
  }

  const std::string& evidence() const { return evidence_; }

 private:
  const Environment& environment_;
  std::string evidence_;
};

int count_list(const char* text) {  // "0,1,2" -> 3
  int n = 1;
  for (const char* c = text; *c; ++c) n += *c == ',';
  return n;
}

}  // namespace

LaunchInfo detect_launch(const Environment& environment) {
  EnvironmentReader env(environment);
  LaunchInfo info;
  auto fill = [&](const char* launcher, std::optional<int> size, std::optional<int> rank,
                  std::optional<int> local_size, std::optional<int> local_rank) {
    info.launcher = launcher;
    info.world_size = size.value_or(0);
    info.rank = rank.value_or(0);
    info.local_size = local_size.value_or(info.world_size > 0 ? info.world_size : 1);
    info.local_rank = local_rank.value_or(0);
  };
  if (env.has("OMPI_COMM_WORLD_SIZE")) {
    fill("Open MPI mpirun", env.integer("OMPI_COMM_WORLD_SIZE"),
         env.integer("OMPI_COMM_WORLD_RANK"), env.integer("OMPI_COMM_WORLD_LOCAL_SIZE"),
         env.integer("OMPI_COMM_WORLD_LOCAL_RANK"));
  } else if (env.has("MV2_COMM_WORLD_SIZE")) {
    fill("MVAPICH2", env.integer("MV2_COMM_WORLD_SIZE"), env.integer("MV2_COMM_WORLD_RANK"),
         env.integer("MV2_COMM_WORLD_LOCAL_SIZE"), env.integer("MV2_COMM_WORLD_LOCAL_RANK"));
  } else if (env.has("MPI_LOCALNRANKS") && env.has("MPI_LOCALRANKID") &&
             (env.has("PMI_RANK") || env.has("PMI_ID"))) {
    const auto rank = env.has("PMI_RANK") ? env.integer("PMI_RANK") : env.integer("PMI_ID");
    fill("MPICH / Intel MPI mpiexec (Hydra)", env.integer("PMI_SIZE"), rank,
         env.integer("MPI_LOCALNRANKS"), env.integer("MPI_LOCALRANKID"));
  } else if (env.has("SLURM_STEP_NUM_TASKS") && env.has("SLURM_PROCID")) {
    const char* gtids = env.text("SLURM_GTIDS");
    fill("Slurm srun", env.integer("SLURM_STEP_NUM_TASKS"), env.integer("SLURM_PROCID"),
         gtids ? std::optional<int>(count_list(gtids)) : std::nullopt,
         env.integer("SLURM_LOCALID"));
  } else if (env.has("FLUX_JOB_SIZE") && env.has("FLUX_TASK_RANK")) {
    fill("Flux", env.integer("FLUX_JOB_SIZE"), env.integer("FLUX_TASK_RANK"), std::nullopt,
         env.integer("FLUX_TASK_LOCAL_ID"));
  } else if (env.has("PMI_SIZE") && env.has("PMI_RANK")) {
    fill("PMI", env.integer("PMI_SIZE"), env.integer("PMI_RANK"), env.integer("PMI_LOCAL_SIZE"),
         env.integer("PMI_LOCAL_RANK"));
  } else if (env.has("PMIX_RANK")) {
    fill("PMIx", std::nullopt, env.integer("PMIX_RANK"), std::nullopt, std::nullopt);
  } else if (env.has("TORCHELASTIC_RUN_ID") && env.has("WORLD_SIZE")) {
    fill("torchrun", env.integer("WORLD_SIZE"), env.integer("RANK"),
         env.integer("LOCAL_WORLD_SIZE"), env.integer("LOCAL_RANK"));
    info.uses_mpi = false;
  } else if (env.has("CROSS_SIZE") && env.has("LOCAL_SIZE") && env.has("WORLD_SIZE")) {
    fill("DeepSpeed launcher", env.integer("WORLD_SIZE"), env.integer("RANK"),
         env.integer("LOCAL_SIZE"), env.integer("LOCAL_RANK"));
    info.uses_mpi = false;
  } else {
    // A Slurm batch script or salloc shell: an allocation, but no step launched this process.
    const auto tasks = env.has("SLURM_NTASKS") ? env.integer("SLURM_NTASKS") : std::nullopt;
    if (tasks && *tasks > 1)
      info.note = "inside a Slurm allocation of " + std::to_string(*tasks) +
                  " tasks, but not started by srun or mpirun: training as one process (start "
                  "it with `srun zerolora ...` or `mpirun -np " +
                  std::to_string(*tasks) + " zerolora ...` for " + std::to_string(*tasks) +
                  " ranks)";
    return info;
  }
  info.evidence = env.evidence();
  const bool bad_rank = info.world_size > 0 && info.rank >= info.world_size;
  const bool bad_local = info.local_rank >= info.local_size ||
                         (info.world_size > 0 && info.local_size > info.world_size);
  if (bad_rank || bad_local)
    throw ConfigError("the launch environment contradicts itself (" + info.evidence +
                      "): a rank must be below its count");
  if (info.multi_rank() && !info.uses_mpi)
    throw ConfigError("started by " + info.launcher + " as rank " + std::to_string(info.rank) +
                      " of " + std::to_string(info.world_size) + " (" + info.evidence +
                      "), which starts processes without MPI; zerolora's ranks work together "
                      "over MPI: start the job with `mpirun -np " +
                      std::to_string(info.world_size) + " zerolora ...` (or srun)");
  return info;
}

void check_mpi_world(const LaunchInfo& launch, int mpi_size, int mpi_rank,
                     const std::string& mpi_library) {
  const bool known = launch.world_size > 0;
  if (known ? (mpi_size == launch.world_size && mpi_rank == launch.rank) : mpi_size > 1) return;
  const std::string expected =
      known ? "rank " + std::to_string(launch.rank) + " of " + std::to_string(launch.world_size)
            : "one rank of a job";
  throw ConfigError(
      "started by " + launch.launcher + " as " + expected + " (" + launch.evidence +
      "), but MPI came up as rank " + std::to_string(mpi_rank) + " of " + std::to_string(mpi_size) +
      " (" + mpi_library +
      "): this MPI library cannot join that launcher's job, and the processes would train "
      "independently into one output directory. Start the job with this MPI's own launcher "
      "(e.g. mpirun.openmpi -np N zerolora ...), or under Slurm with an srun whose MPI plugin "
      "this library supports (srun --mpi=pmix; see srun --mpi=list)");
}

}  // namespace zerolora
