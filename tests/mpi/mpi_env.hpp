// Access to the process's communicator from MPI tests.
#pragma once

#include "comm/communicator.hpp"

namespace zerolora::testing {

class MpiEnvironment {
 public:
  static Communicator& comm() { return *comm_; }
  static Communicator* comm_;  // set once by mpi_main before the tests run
};

}  // namespace zerolora::testing
