// How this process was started: alone, or as one rank of a job, by which launcher. Read from
// the environment each launcher gives its ranks, first match wins (MPI's own variables before
// Slurm's, because mpirun inside a Slurm allocation starts its daemons with srun and the ranks
// inherit that step's SLURM_* values):
//   Open MPI mpirun         OMPI_COMM_WORLD_SIZE/RANK/LOCAL_SIZE/LOCAL_RANK
//   MVAPICH2                MV2_COMM_WORLD_SIZE/RANK/LOCAL_SIZE/LOCAL_RANK
//   MPICH / Intel MPI       MPI_LOCALNRANKS + MPI_LOCALRANKID + PMI_RANK or PMI_ID (PMI_SIZE)
//   (Hydra mpiexec)
//   Slurm srun (a step)     SLURM_STEP_NUM_TASKS + SLURM_PROCID, SLURM_LOCALID, SLURM_GTIDS
//   Flux                    FLUX_JOB_SIZE + FLUX_TASK_RANK, FLUX_TASK_LOCAL_ID
//   PMI (Slurm pmi2, Cray)  PMI_SIZE + PMI_RANK (PMI_LOCAL_SIZE/RANK)
//   PMIx                    PMIX_RANK (size unknown)
//   torchrun                TORCHELASTIC_RUN_ID + WORLD_SIZE/RANK/LOCAL_WORLD_SIZE/LOCAL_RANK
//   DeepSpeed launcher      CROSS_SIZE + LOCAL_SIZE + WORLD_SIZE/RANK/LOCAL_RANK
// A Slurm batch script or salloc shell (SLURM_NTASKS without a step) is not a launch: the
// process runs alone, with a note. torchrun and the DeepSpeed launcher start processes without
// MPI, which zerolora's ranks need: a multi-rank launch by them is refused.
#pragma once

#include <functional>
#include <string>

namespace zerolora {

struct LaunchInfo {
  std::string launcher;  // empty: started alone
  std::string evidence;  // the variables read, e.g. "SLURM_STEP_NUM_TASKS=8, SLURM_PROCID=3"
  int world_size = 1;    // 0: a launcher whose world size is not in the environment
  int rank = 0;
  int local_size = 1;  // ranks on this machine
  int local_rank = 0;
  bool uses_mpi = true;  // false: torchrun / DeepSpeed (no MPI world to join)
  std::string note;      // something the user should know (a batch allocation, say), or empty

  // True when this process is one of several ranks (MPI must be initialised).
  bool multi_rank() const { return !launcher.empty() && world_size != 1; }
};

using Environment = std::function<const char*(const char* name)>;

// Reads the environment (std::getenv by default; tests pass their own). Throws ConfigError for
// values that do not parse or contradict each other, and for a multi-rank launch by a launcher
// that does not start MPI jobs.
LaunchInfo detect_launch(const Environment& environment = nullptr);

// After MPI_Init: refuses (ConfigError) when MPI's world is not the one the launcher started,
// e.g. an MPICH mpiexec or a Slurm srun without PMIx starting this Open MPI build, where every
// process comes up alone and W independent trainings would write into one output directory.
void check_mpi_world(const LaunchInfo& launch, int mpi_size, int mpi_rank,
                     const std::string& mpi_library);

}  // namespace zerolora
