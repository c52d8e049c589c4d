// gtest main for tests launched by `mpirun -np W`: one communicator for the whole process
// (MPI when launched by mpirun, local otherwise), and a verdict agreed by every rank.
#include <gtest/gtest.h>

#include <cstdio>

#include "mpi_env.hpp"

namespace zerolora::testing {

Communicator* MpiEnvironment::comm_ = nullptr;

}  // namespace zerolora::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  auto comm = zerolora::make_communicator();
  zerolora::testing::MpiEnvironment::comm_ = comm.get();
  if (comm->rank() != 0) {  // only rank 0 prints progress; failures print on their rank
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int local = RUN_ALL_TESTS();
  const auto failed = comm->all_reduce_sum<std::int64_t>(local != 0 ? 1 : 0);
  if (comm->rank() == 0)
    std::printf("world size %d: %lld rank(s) failed\n", comm->size(),
                static_cast<long long>(failed));
  return failed == 0 ? 0 : 1;
}
