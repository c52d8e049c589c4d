#include "comm/rank_guard.hpp"

#include <cstdio>

#include "core/exit_codes.hpp"

namespace zerolora {

int run_guarded(Communicator& comm, const std::function<int()>& body) {
  try {
    return body();
  } catch (...) {
    if (comm.size() == 1) throw;
    const ExitReport report = exit_report(std::current_exception());
    std::fprintf(stderr, "zerolora: rank %d of %d: %s\n", comm.rank(), comm.size(),
                 report.message.c_str());
    std::fflush(stderr);
    comm.abort(report.code);
  }
  return 1;  // not reached: abort() does not return
}

}  // namespace zerolora
