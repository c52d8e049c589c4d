// A failure on one rank must end the whole run promptly, never leave the other ranks waiting
// in a collective: run_guarded catches any exception, prints it prefixed with the rank, and in
// a multi-rank run aborts every rank (MPI_Abort) with the error's exit code. In a
// single-process run it rethrows, so `main` reports it as usual.
#pragma once

#include <functional>

#include "comm/communicator.hpp"

namespace zerolora {

int run_guarded(Communicator& comm, const std::function<int()>& body);

}  // namespace zerolora
