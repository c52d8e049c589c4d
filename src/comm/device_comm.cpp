#include "comm/device_comm.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "core/buffer.hpp"
#include "core/error.hpp"

namespace zerolora {

DdpBackend parse_ddp_backend(const std::string& value) {
  if (value == "auto") return DdpBackend::kAuto;
  if (value == "nccl") return DdpBackend::kNccl;
  if (value == "mpi") return DdpBackend::kMpi;
  if (value == "gloo" || value == "ccl" || value == "hccl" || value == "cncl" || value == "mlu")
    throw UnsupportedError("--ddp_backend " + value +
                           ": zerolora's ranks talk over MPI on the host and NCCL on GPUs; "
                           "use auto, nccl or mpi");
  throw UsageError("--ddp_backend " + value + ": expected auto, nccl or mpi");
}

std::string to_string(DdpBackend backend) {
  switch (backend) {
    case DdpBackend::kAuto:
      return "auto";
    case DdpBackend::kNccl:
      return "nccl";
    case DdpBackend::kMpi:
      return "mpi";
  }
  return "?";
}

KeyCount count_keys(Communicator& comm, const std::string& key) {
  constexpr std::size_t kKey = 256;
  std::array<char, kKey> mine{};
  std::copy_n(key.begin(), std::min(key.size(), kKey - 1), mine.begin());
  std::vector<char> all(kKey * static_cast<std::size_t>(comm.size()));
  comm.all_gather(mine.data(), all.data(), kKey);
  auto key_of = [&](int r) { return all.data() + kKey * static_cast<std::size_t>(r); };
  KeyCount count{0, 0, 0};
  for (int r = 0; r < comm.size(); ++r) {
    int holders = 0;
    for (int q = 0; q < comm.size(); ++q) holders += std::memcmp(key_of(r), key_of(q), kKey) == 0;
    count.most = std::max(count.most, holders);
    if (std::memcmp(key_of(r), mine.data(), kKey) != 0) continue;
    count.before += r < comm.rank();
    ++count.same;
  }
  return count;
}

std::string host_name() {
  std::array<char, 256> name{};
  return gethostname(name.data(), name.size() - 1) == 0 ? std::string(name.data()) : std::string();
}

MachinePeers machine_peers(Communicator& comm) {
  const KeyCount count = count_keys(comm, host_name());
  return {count.before, count.same};
}

int choose_gpu_ordinal(int explicit_ordinal, int local_rank, int visible_gpus) {
  if (visible_gpus <= 0)
    throw DeviceError("--device cuda: this process sees no GPU (CUDA_VISIBLE_DEVICES, driver)");
  if (explicit_ordinal < 0) return local_rank % visible_gpus;
  if (explicit_ordinal >= visible_gpus)
    throw UsageError("--device cuda:" + std::to_string(explicit_ordinal) + ": this process sees " +
                     std::to_string(visible_gpus) +
                     " GPU(s), cuda:0 to cuda:" + std::to_string(visible_gpus - 1));
  return explicit_ordinal;
}

BackendChoice choose_ddp_backend(DdpBackend requested, int world_size, int ranks_per_gpu,
                                 bool nccl_everywhere) {
  const std::string shared = "up to " + std::to_string(ranks_per_gpu) + " ranks share one GPU";
  switch (requested) {
    case DdpBackend::kNccl:
      if (!nccl_everywhere)
        throw UnsupportedError(
            "--ddp_backend nccl: NCCL is not available on every rank (this build has no CUDA, or "
            "libnccl.so.2 is not on LD_LIBRARY_PATH); --ddp_backend mpi stages GPU buffers "
            "through the host");
      if (ranks_per_gpu > 1)
        throw UsageError("--ddp_backend nccl: " + shared +
                         ", and NCCL refuses two ranks on one GPU; give each rank its own GPU "
                         "(as many ranks per machine as GPUs) or use --ddp_backend mpi");
      return {DdpBackend::kNccl, "NCCL (asked for)"};
    case DdpBackend::kMpi:
      return {DdpBackend::kMpi, "collectives staged through host memory over MPI (asked for)"};
    case DdpBackend::kAuto:
      if (world_size == 1) return {DdpBackend::kMpi, "one rank, no collectives"};
      if (ranks_per_gpu > 1)
        return {DdpBackend::kMpi,
                shared + " (NCCL refuses that): collectives staged through host memory over MPI"};
      if (!nccl_everywhere)
        return {DdpBackend::kMpi,
                "NCCL not found on every rank: collectives staged through host memory over MPI"};
      return {DdpBackend::kNccl, "NCCL, one rank per GPU"};
  }
  return {};
}

namespace {

using Bytes = Buffer<unsigned char>;

// Host staging buffers, kept for reuse by exact size (ZeRO-3 gathers the same unit sizes every
// step); at most kKept of them, the oldest freed first, so the pool never holds more than a
// few units' worth beyond what is in flight.
class StagingPool {
 public:
  static constexpr std::size_t kKept = 4;
  Bytes take(std::size_t bytes) {
    const std::size_t size = std::max<std::size_t>(bytes, 1);
    const auto fit =
        std::find_if(free_.begin(), free_.end(), [&](const Bytes& b) { return b.size() == size; });
    if (fit == free_.end()) return Bytes(size);
    Bytes buffer = std::move(*fit);
    free_.erase(fit);
    return buffer;
  }
  void give(Bytes buffer) {
    if (buffer.empty()) return;
    free_.push_back(std::move(buffer));
    if (free_.size() > kKept) free_.erase(free_.begin());
  }

 private:
  std::vector<Bytes> free_;
};

class StagedRequest final : public CommRequest {
 public:
  StagedRequest(Device& device, StagingPool& pool, Request host, Bytes send, Bytes result,
                void* device_result, std::size_t result_bytes)
      : device_(device),
        pool_(pool),
        host_(std::move(host)),
        send_(std::move(send)),
        result_(std::move(result)),
        device_result_(device_result),
        result_bytes_(result_bytes) {}
  ~StagedRequest() override {
    try {
      wait();
    } catch (...) {
    }
  }
  void wait() override {
    if (finished_) return;
    finished_ = true;
    host_->wait();
    device_.copy_to_device(device_result_, result_.data(), result_bytes_);
    pool_.give(std::move(send_));
    pool_.give(std::move(result_));
  }
  bool done() override { return finished_ || host_->done(); }

 private:
  Device& device_;
  StagingPool& pool_;
  Request host_;
  Bytes send_, result_;
  void* device_result_;
  std::size_t result_bytes_;
  bool finished_ = false;
};

class StagedCommunicator final : public Communicator {
 public:
  StagedCommunicator(Device& device, Communicator& host) : device_(device), host_(host) {
    if (host.device_memory())
      throw InternalError("the staged communicator needs a host communicator, got " + host.name());
  }
  int rank() const override { return host_.rank(); }
  int size() const override { return host_.size(); }
  std::string name() const override {
    return host_.name() + ", " + device_.name() + " buffers staged through host memory";
  }
  bool device_memory() const override { return !device_.host_accessible(); }

  Request all_gather_async(const void* send, void* recv, std::size_t bytes_per_rank) override {
    Bytes in = download(send, bytes_per_rank);
    const std::size_t total = bytes_per_rank * static_cast<std::size_t>(size());
    Bytes out = pool_.take(total);
    Request r = host_.all_gather_async(in.data(), out.data(), bytes_per_rank);
    return finish(std::move(r), std::move(in), std::move(out), recv, total);
  }
  Request reduce_scatter_async(const void* send, void* recv, std::size_t count_per_rank,
                               ElementType type) override {
    const std::size_t bytes = count_per_rank * element_bytes(type);
    Bytes in = download(send, bytes * static_cast<std::size_t>(size()));
    Bytes out = pool_.take(bytes);
    Request r = host_.reduce_scatter_async(in.data(), out.data(), count_per_rank, type);
    return finish(std::move(r), std::move(in), std::move(out), recv, bytes);
  }
  Request all_reduce_async(void* data, std::size_t count, ElementType type) override {
    const std::size_t bytes = count * element_bytes(type);
    Bytes staged = download(data, bytes);
    Request r = host_.all_reduce_async(staged.data(), count, type);
    return finish(std::move(r), Bytes(), std::move(staged), data, bytes);
  }
  Request broadcast_async(void* data, std::size_t bytes, int root) override {
    Bytes staged = download(data, bytes);
    Request r = host_.broadcast_async(staged.data(), bytes, root);
    return finish(std::move(r), Bytes(), std::move(staged), data, bytes);
  }
  void barrier() override {
    device_.synchronize();
    host_.barrier();
  }
  [[noreturn]] void abort(int exit_code) override {
    host_.abort(exit_code);
    std::_Exit(exit_code);  // abort() does not return; the compiler cannot see it through virtual
  }
  CommStats stats() const override { return host_.stats(); }
  void reset_stats() override { host_.reset_stats(); }

 private:
  // copy_to_host waits for the device's work issued so far: the input is final.
  Bytes download(const void* device_src, std::size_t bytes) {
    Bytes staged = pool_.take(bytes);
    if (bytes) device_.copy_to_host(staged.data(), device_src, bytes);
    return staged;
  }
  Request finish(Request host, Bytes send, Bytes result, void* device_result, std::size_t bytes) {
    return std::make_unique<StagedRequest>(device_, pool_, std::move(host), std::move(send),
                                           std::move(result), device_result, bytes);
  }

  Device& device_;
  Communicator& host_;
  StagingPool pool_;
};

}  // namespace

std::unique_ptr<Communicator> make_staged_communicator(Device& device, Communicator& host) {
  return std::make_unique<StagedCommunicator>(device, host);
}

}  // namespace zerolora
