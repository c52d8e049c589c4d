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

// The local rank picks the GPU; auto takes NCCL only when every rank has its own GPU.
TEST(GpuPlacement, LocalRankPicksTheGpu) {
  // 8 ranks on a node of 8 GPUs: rank r on GPU r, NCCL.
  for (int r = 0; r < 8; ++r) {
    const GpuPlacement p = place_on_gpu(-1, DdpBackend::kAuto, r, 8, 16, 8, true);
    EXPECT_EQ(p.ordinal, r);
    EXPECT_EQ(p.backend, DdpBackend::kNccl) << p.reason;
  }
  // 4 ranks sharing one GPU (the device check): all on GPU 0, staged.
  for (int r = 0; r < 4; ++r) {
    const GpuPlacement p = place_on_gpu(-1, DdpBackend::kAuto, r, 4, 4, 1, true);
    EXPECT_EQ(p.ordinal, 0);
    EXPECT_EQ(p.backend, DdpBackend::kMpi);
    EXPECT_NE(p.reason.find("4 ranks of this machine share 1 GPU(s)"), std::string::npos)
        << p.reason;
  }
  // 3 ranks on 2 GPUs: round-robin; rank 1, alone on GPU 1, stages too: every rank of the
  // machine must choose the same.
  EXPECT_EQ(place_on_gpu(-1, DdpBackend::kMpi, 2, 3, 3, 2, true).ordinal, 0);
  EXPECT_EQ(place_on_gpu(-1, DdpBackend::kMpi, 1, 3, 3, 2, true).ordinal, 1);
  for (int r = 0; r < 3; ++r)
    EXPECT_EQ(place_on_gpu(-1, DdpBackend::kAuto, r, 3, 3, 2, true).backend, DdpBackend::kMpi);
  EXPECT_THROW(place_on_gpu(-1, DdpBackend::kNccl, 1, 3, 3, 2, true), UsageError);
  // No NCCL: auto stages; asking for it is refused with the way out.
  EXPECT_EQ(place_on_gpu(-1, DdpBackend::kAuto, 0, 2, 2, 2, false).backend, DdpBackend::kMpi);
  EXPECT_THROW(place_on_gpu(-1, DdpBackend::kNccl, 0, 2, 2, 2, false), UnsupportedError);
  // One rank: NCCL only when asked for (the device check's W = 1 comparison).
  EXPECT_EQ(place_on_gpu(-1, DdpBackend::kAuto, 0, 1, 1, 1, true).backend, DdpBackend::kMpi);
  EXPECT_EQ(place_on_gpu(-1, DdpBackend::kNccl, 0, 1, 1, 1, true).backend, DdpBackend::kNccl);
}

TEST(GpuPlacement, ExplicitGpuAndWhatNcclRefuses) {
  // cuda:3 pins the rank; one rank per node (2 nodes) may use NCCL.
  const GpuPlacement pinned = place_on_gpu(3, DdpBackend::kAuto, 0, 1, 2, 8, true);
  EXPECT_EQ(pinned.ordinal, 3);
  EXPECT_EQ(pinned.backend, DdpBackend::kNccl);
  // Two ranks of one machine on cuda:0 share it: NCCL refused, auto stages.
  try {
    place_on_gpu(0, DdpBackend::kNccl, 1, 2, 2, 1, true);
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("2 ranks of this machine share 1 GPU(s)"), std::string::npos) << message;
    EXPECT_NE(message.find("--ddp_backend mpi"), std::string::npos) << message;
  }
  EXPECT_EQ(place_on_gpu(0, DdpBackend::kAuto, 1, 2, 2, 1, true).backend, DdpBackend::kMpi);
  try {
    place_on_gpu(2, DdpBackend::kAuto, 0, 1, 1, 2, true);
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:0 to cuda:1"), std::string::npos) << e.what();
  }
  EXPECT_THROW(place_on_gpu(-1, DdpBackend::kAuto, 0, 1, 1, 0, true), DeviceError);
}

}  // namespace
}  // namespace zerolora
