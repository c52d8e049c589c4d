#include "comm/device_comm.hpp"

#include <algorithm>
#include <cstdlib>
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

GpuPlacement place_on_gpu(int explicit_ordinal, DdpBackend requested, int local_rank,
                          int local_size, int world_size, int visible_gpus, bool nccl_available) {
  if (visible_gpus <= 0)
    throw DeviceError("--device cuda: this process sees no GPU (CUDA_VISIBLE_DEVICES, driver)");
  GpuPlacement p;
  // Ranks of this machine on this rank's GPU, and whether any GPU of the machine is shared:
  // the backend follows the latter, so that every rank of the machine makes the same choice.
  int sharing = 1;
  bool machine_shares = false;
  if (explicit_ordinal >= 0) {
    if (explicit_ordinal >= visible_gpus)
      throw UsageError("--device cuda:" + std::to_string(explicit_ordinal) +
                       ": this process sees " + std::to_string(visible_gpus) +
                       " GPU(s), cuda:0 to cuda:" + std::to_string(visible_gpus - 1));
    p.ordinal = explicit_ordinal;
    sharing = local_size;
    machine_shares = local_size > 1;
  } else {
    p.ordinal = local_rank % visible_gpus;
    sharing = local_size / visible_gpus + (local_rank % visible_gpus < local_size % visible_gpus);
    machine_shares = local_size > visible_gpus;
  }
  const std::string shared =
      machine_shares
          ? std::to_string(local_size) + " ranks of this machine share " +
                std::to_string(explicit_ordinal >= 0 ? 1 : std::min(local_size, visible_gpus)) +
                " GPU(s)"
          : std::string();
  const std::string gpu = "GPU " + std::to_string(p.ordinal) + " of " +
                          std::to_string(visible_gpus) + " visible, local rank " +
                          std::to_string(local_rank) + " of " + std::to_string(local_size) +
                          (sharing > 1 ? " (" + std::to_string(sharing) + " ranks on it)" : "");
  switch (requested) {
    case DdpBackend::kNccl:
      if (!nccl_available)
        throw UnsupportedError(
            "--ddp_backend nccl: NCCL is not available (this build has no CUDA, or libnccl.so.2 "
            "is not on LD_LIBRARY_PATH); --ddp_backend mpi stages GPU buffers through the host");
      if (machine_shares)
        throw UsageError("--ddp_backend nccl: " + shared +
                         ", and NCCL refuses two ranks on one GPU; give each rank its own GPU "
                         "(as many ranks per machine as GPUs) or use --ddp_backend mpi");
      p.backend = DdpBackend::kNccl;
      p.reason = gpu + "; NCCL (asked for)";
      break;
    case DdpBackend::kMpi:
      p.backend = DdpBackend::kMpi;
      p.reason = gpu + "; collectives staged through host memory over MPI (asked for)";
      break;
    case DdpBackend::kAuto:
      p.backend = DdpBackend::kMpi;
      if (world_size == 1)
        p.reason = gpu + "; one rank, no collectives";
      else if (machine_shares)
        p.reason = gpu + "; " + shared +
                   " (NCCL refuses that): collectives staged through host memory over MPI";
      else if (!nccl_available)
        p.reason = gpu + "; no NCCL found: collectives staged through host memory over MPI";
      else {
        p.backend = DdpBackend::kNccl;
        p.reason = gpu + "; NCCL";
      }
      break;
  }
  return p;
}

namespace {

using Bytes = Buffer<unsigned char>;

// Host staging buffers, kept for reuse: ZeRO-3 gathers the same unit sizes every step.
class StagingPool {
 public:
  Bytes take(std::size_t bytes) {
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if (it->size() >= bytes && (best == free_.end() || it->size() < best->size())) best = it;
    if (best == free_.end()) return Bytes(std::max<std::size_t>(bytes, 1));
    Bytes buffer = std::move(*best);
    free_.erase(best);
    return buffer;
  }
  void give(Bytes buffer) {
    if (!buffer.empty()) free_.push_back(std::move(buffer));
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
