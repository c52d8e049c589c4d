// The single-process communicator: world size 1, every collective is a copy or nothing.
#include <cstring>

#include "comm/communicator.hpp"
#include "core/error.hpp"

namespace zerolora {
namespace {

class DoneRequest : public CommRequest {
 public:
  void wait() override {}
  bool done() override { return true; }
};

class LocalCommunicator : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "local"; }

  Request all_gather_async(const void* send, void* recv, std::size_t bytes) override {
    if (send != recv) std::memmove(recv, send, bytes);
    return std::make_unique<DoneRequest>();
  }
  Request reduce_scatter_async(const void* send, void* recv, std::size_t count,
                               ElementType type) override {
    if (send != recv) std::memmove(recv, send, count * element_bytes(type));
    return std::make_unique<DoneRequest>();
  }
  Request all_reduce_async(void*, std::size_t, ElementType) override {
    return std::make_unique<DoneRequest>();
  }
  Request broadcast_async(void*, std::size_t, int root) override {
    ZL_CHECK(root == 0);
    return std::make_unique<DoneRequest>();
  }
  void barrier() override {}
  [[noreturn]] void abort(int exit_code) override { std::_Exit(exit_code); }
  CommStats stats() const override { return {}; }
  void reset_stats() override {}
};

}  // namespace

std::unique_ptr<Communicator> make_local_communicator() {
  return std::make_unique<LocalCommunicator>();
}

}  // namespace zerolora
