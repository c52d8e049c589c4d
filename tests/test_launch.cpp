// Launcher detection from each launcher's environment (simulated here; tests/launch_test.sh
// runs the real executable under simulated launchers and the real mpirun), and the refusal
// when MPI did not come up with the world the launcher started.
#include <gtest/gtest.h>

#include <map>

#include "comm/device_comm.hpp"
#include "comm/launch.hpp"
#include "core/error.hpp"

namespace zerolora {
namespace {

using Variables = std::map<std::string, std::string>;

LaunchInfo detect(const Variables& variables) {
  return detect_launch([&](const char* name) -> const char* {
    const auto it = variables.find(name);
    return it == variables.end() ? nullptr : it->second.c_str();
  });
}

struct Case {
  const char* launcher;
  Variables variables;
  int world_size, rank, local_size, local_rank;
};

TEST(Launch, EachLaunchersEnvironment) {
  const std::vector<Case> cases = {
      {"Open MPI mpirun",
       {{"OMPI_COMM_WORLD_SIZE", "8"},
        {"OMPI_COMM_WORLD_RANK", "5"},
        {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
        {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
        // mpirun inside a Slurm allocation: the daemons' step variables are inherited
        {"SLURM_STEP_NUM_TASKS", "2"},
        {"SLURM_PROCID", "1"}},
       8,
       5,
       4,
       1},
      {"MVAPICH2",
       {{"MV2_COMM_WORLD_SIZE", "4"},
        {"MV2_COMM_WORLD_RANK", "2"},
        {"MV2_COMM_WORLD_LOCAL_SIZE", "2"},
        {"MV2_COMM_WORLD_LOCAL_RANK", "0"}},
       4,
       2,
       2,
       0},
      {"MPICH / Intel MPI mpiexec (Hydra)",
       {{"PMI_RANK", "3"},
        {"PMI_SIZE", "4"},
        {"PMI_FD", "7"},
        {"MPI_LOCALNRANKS", "4"},
        {"MPI_LOCALRANKID", "3"}},
       4,
       3,
       4,
       3},
      {"MPICH / Intel MPI mpiexec (Hydra)",  // -pmi-port mode: no size in the environment
       {{"PMI_ID", "1"},
        {"PMI_PORT", "host:1234"},
        {"MPI_LOCALNRANKS", "2"},
        {"MPI_LOCALRANKID", "1"}},
       0,
       1,
       2,
       1},
      {"Slurm srun",
       {{"SLURM_STEP_NUM_TASKS", "16"},
        {"SLURM_PROCID", "9"},
        {"SLURM_LOCALID", "1"},
        {"SLURM_GTIDS", "8,9,10,11,12,13,14,15"},
        {"SLURM_NTASKS", "16"}},
       16,
       9,
       8,
       1},
      {"Flux",
       {{"FLUX_JOB_SIZE", "4"}, {"FLUX_TASK_RANK", "2"}, {"FLUX_TASK_LOCAL_ID", "0"}},
       4,
       2,
       4,
       0},
      {"PMI",
       {{"PMI_SIZE", "6"}, {"PMI_RANK", "4"}, {"PMI_LOCAL_SIZE", "3"}, {"PMI_LOCAL_RANK", "1"}},
       6,
       4,
       3,
       1},
      {"PMIx", {{"PMIX_RANK", "2"}, {"PMIX_NAMESPACE", "prterun-host-1@1"}}, 0, 2, 1, 0},
      {"torchrun",  // one process: fine, it needs no MPI
       {{"TORCHELASTIC_RUN_ID", "x"},
        {"WORLD_SIZE", "1"},
        {"RANK", "0"},
        {"LOCAL_WORLD_SIZE", "1"},
        {"LOCAL_RANK", "0"}},
       1,
       0,
       1,
       0},
  };
  for (const Case& c : cases) {
    const LaunchInfo info = detect(c.variables);
    EXPECT_EQ(info.launcher, c.launcher);
    EXPECT_EQ(info.world_size, c.world_size) << c.launcher;
    EXPECT_EQ(info.rank, c.rank) << c.launcher;
    EXPECT_EQ(info.local_size, c.local_size) << c.launcher;
    EXPECT_EQ(info.local_rank, c.local_rank) << c.launcher;
    EXPECT_EQ(info.multi_rank(), c.world_size != 1) << c.launcher;
    EXPECT_FALSE(info.evidence.empty()) << c.launcher;
  }
}

TEST(Launch, AloneAndInsideASlurmAllocation) {
  const LaunchInfo alone = detect({{"HOME", "/root"}});
  EXPECT_TRUE(alone.launcher.empty());
  EXPECT_FALSE(alone.multi_rank());
  EXPECT_TRUE(alone.note.empty());
  // A batch script: SLURM_PROCID=0 and SLURM_NTASKS are set, but no step launched this process.
  const LaunchInfo batch = detect({{"SLURM_NTASKS", "8"},
                                   {"SLURM_PROCID", "0"},
                                   {"SLURM_LOCALID", "0"},
                                   {"SLURM_JOB_ID", "42"}});
  EXPECT_FALSE(batch.multi_rank());
  EXPECT_NE(batch.note.find("not started by srun or mpirun"), std::string::npos) << batch.note;
  EXPECT_NE(batch.note.find("mpirun -np 8"), std::string::npos) << batch.note;
}

TEST(Launch, RefusesWhatCannotWork) {
  auto refused = [](const Variables& v, const std::string& part) {
    try {
      detect(v);
      ADD_FAILURE() << "no error for " << part;
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  refused({{"TORCHELASTIC_RUN_ID", "x"}, {"WORLD_SIZE", "8"}, {"RANK", "3"}},
          "started by torchrun as rank 3 of 8");
  refused({{"CROSS_SIZE", "1"}, {"LOCAL_SIZE", "2"}, {"WORLD_SIZE", "2"}, {"RANK", "0"}},
          "mpirun -np 2");
  refused({{"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_RANK", "2"}},
          "a rank must be below its count");
  refused({{"OMPI_COMM_WORLD_SIZE", "two"}}, "OMPI_COMM_WORLD_SIZE=two");
}

TEST(Launch, MpiMustComeUpWithTheLaunchersWorld) {
  const LaunchInfo srun = detect({{"SLURM_STEP_NUM_TASKS", "4"}, {"SLURM_PROCID", "2"}});
  EXPECT_NO_THROW(check_mpi_world(srun, 4, 2, "Open MPI v4.1.4"));
  try {
    check_mpi_world(srun, 1, 0, "Open MPI v4.1.4");  // every process a singleton
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("started by Slurm srun as rank 2 of 4"), std::string::npos) << message;
    EXPECT_NE(message.find("MPI came up as rank 0 of 1 (Open MPI v4.1.4)"), std::string::npos)
        << message;
    EXPECT_NE(message.find("srun --mpi=pmix"), std::string::npos) << message;
  }
  // A launcher that does not say the world size: a singleton is still refused.
  const LaunchInfo pmix = detect({{"PMIX_RANK", "0"}});
  EXPECT_THROW(check_mpi_world(pmix, 1, 0, "Open MPI"), ConfigError);
  EXPECT_NO_THROW(check_mpi_world(pmix, 3, 0, "Open MPI"));
}

// --ddp_backend: Transformers' names; the ones zerolora cannot serve are refused by name.
TEST(GpuPlacement, DdpBackendNames) {
  EXPECT_EQ(parse_ddp_backend("auto"), DdpBackend::kAuto);
  EXPECT_EQ(parse_ddp_backend("nccl"), DdpBackend::kNccl);
  EXPECT_EQ(parse_ddp_backend("mpi"), DdpBackend::kMpi);
  EXPECT_THROW(parse_ddp_backend("gloo"), UnsupportedError);
  EXPECT_THROW(parse_ddp_backend("NCCL"), UsageError);
  for (DdpBackend b : {DdpBackend::kAuto, DdpBackend::kNccl, DdpBackend::kMpi})
    EXPECT_EQ(parse_ddp_backend(to_string(b)), b);
}

// The local rank picks the GPU (modulo the GPUs the rank sees); cuda:N pins it.
TEST(GpuPlacement, LocalRankPicksTheGpu) {
  for (int r = 0; r < 8; ++r) EXPECT_EQ(choose_gpu_ordinal(-1, r, 8), r);  // 8 ranks, 8 GPUs
  for (int r = 0; r < 4; ++r) EXPECT_EQ(choose_gpu_ordinal(-1, r, 1), 0);  // 4 on one GPU
  EXPECT_EQ(choose_gpu_ordinal(-1, 2, 2), 0);  // 3 ranks on 2 GPUs: round-robin
  EXPECT_EQ(choose_gpu_ordinal(-1, 1, 2), 1);
  // CUDA_VISIBLE_DEVICES set per rank (Slurm --gpus-per-task): each sees its own GPU as 0.
  for (int r = 0; r < 8; ++r) EXPECT_EQ(choose_gpu_ordinal(-1, r, 1), 0);
  EXPECT_EQ(choose_gpu_ordinal(3, 0, 8), 3);
  try {
    choose_gpu_ordinal(2, 0, 2);
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:0 to cuda:1"), std::string::npos) << e.what();
  }
  EXPECT_THROW(choose_gpu_ordinal(-1, 0, 0), DeviceError);
}

// The backend follows gathered facts: the most ranks on one physical GPU, NCCL everywhere.
TEST(GpuPlacement, BackendFromWhatEveryRankSees) {
  EXPECT_EQ(choose_ddp_backend(DdpBackend::kAuto, 8, 1, true).backend, DdpBackend::kNccl);
  // Ranks sharing a GPU (the device check's 4 on one H200): auto stages, nccl is refused.
  const BackendChoice shared = choose_ddp_backend(DdpBackend::kAuto, 4, 4, true);
  EXPECT_EQ(shared.backend, DdpBackend::kMpi);
  EXPECT_NE(shared.reason.find("up to 4 ranks share one GPU"), std::string::npos) << shared.reason;
  try {
    choose_ddp_backend(DdpBackend::kNccl, 2, 2, true);
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("up to 2 ranks share one GPU"), std::string::npos) << message;
    EXPECT_NE(message.find("--ddp_backend mpi"), std::string::npos) << message;
  }
  // No NCCL on some rank: auto stages; asking for it is refused with the way out.
  EXPECT_EQ(choose_ddp_backend(DdpBackend::kAuto, 2, 1, false).backend, DdpBackend::kMpi);
  EXPECT_THROW(choose_ddp_backend(DdpBackend::kNccl, 2, 1, false), UnsupportedError);
  // One rank: NCCL only when asked for (the device check's W = 1 comparison).
  EXPECT_EQ(choose_ddp_backend(DdpBackend::kAuto, 1, 1, true).backend, DdpBackend::kMpi);
  EXPECT_EQ(choose_ddp_backend(DdpBackend::kNccl, 1, 1, true).backend, DdpBackend::kNccl);
  EXPECT_EQ(choose_ddp_backend(DdpBackend::kMpi, 8, 1, true).backend, DdpBackend::kMpi);
}

}  // namespace
}  // namespace zerolora
