// Fault drill for `mpirun -np 3`: every rank loads its ZeRO-3 shard of a model, rank 2 from a
// damaged copy; the others go on to a collective that rank 2 never joins. Run by
// fault_test.sh, which expects the whole job to end promptly with rank 2's message.
//   zerolora_fault_drill GOOD_MODEL_DIR BAD_MODEL_DIR
#include <cstdio>

#include "comm/rank_guard.hpp"
#include "core/precision.hpp"
#include "zero3/sharded_weights.hpp"

int main(int argc, char** argv) {
  using namespace zerolora;
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s GOOD_MODEL_DIR BAD_MODEL_DIR\n", argv[0]);
    return 2;
  }
  auto comm = make_communicator();
  return run_guarded(*comm, [&] {
    Runtime rt(1);
    const Checkpoint checkpoint(comm->rank() == 2 ? argv[2] : argv[1]);
    auto weights = ShardedWeights<bf16>::load(rt, *comm, checkpoint);
    comm->barrier();  // the healthy ranks wait here for rank 2, which is gone
    std::printf("rank %d: loaded %zu bytes\n", comm->rank(), weights.shard_bytes());
    return 0;
  });
}
