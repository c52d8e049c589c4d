// ZeRO-3 parameter store: each rank keeps 1/W of every unit of base weights (a decoder layer,
// the embedding, the final norm, the lm_head), padded so W divides the unit, rank r holding
// elements [r n/W, (r+1) n/W), in the memory of the runtime's device (a GPU's, or the host's).
// Loading reads only those byte ranges from the safetensors files (memory-mapped), straight
// into the shard or, for a device the host cannot address, through a bounded host staging
// buffer: peak host memory while loading is about a chunk, not the model.
//
// The model announces each step's acquisition order (begin_schedule); acquire(unit) waits for
// that unit's all-gather, issued up to `prefetch_depth` units ahead of use on the
// communicator's thread so it overlaps compute; release(unit) returns the gathered buffer to
// a pool. A cap on gathered elements alive (DeepSpeed's stage3_max_live_parameters) holds
// prefetching back. Every rank follows the same schedule with the same rules, so every rank
// issues the same all-gathers in the same order. With W = 1 the shard is the whole unit and
// acquire returns it without copying: a GPU run below ZeRO-3 keeps its model so (a one-rank
// store, whatever the communicator, which it never calls). The communicator must take the device's
// buffers (comm/device_comm.hpp: NCCL, or staged through the host, for a GPU).
#pragma once

#include <cstdint>
#include <deque>
#include <vector>

#include "comm/communicator.hpp"
#include "core/buffer.hpp"
#include "core/device.hpp"
#include "core/runtime.hpp"
#include "io/checkpoint.hpp"
#include "model/weight_provider.hpp"

namespace zerolora {

struct ZeroOptions {
  int prefetch_depth = 1;       // units gathered ahead of the one in use
  Index max_live_elements = 0;  // cap on gathered elements alive at once; 0 = no cap
  // Host staging while loading onto a device the host cannot address: at most this many bytes
  // of the checkpoint on the host at once.
  Index load_staging_bytes = Index{64} << 20;
};

template <class W>
class ShardedWeights : public WeightProvider<W> {
 public:
  // Reads this rank's byte ranges of every tensor (shapes are validated first). With W > 1,
  // throws InternalError when `comm` does not take the memory of rt's device.
  static ShardedWeights load(Runtime& rt, Communicator& comm, const Checkpoint& checkpoint,
                             ZeroOptions options = {});
  // The shard of random_llama_weights(config, seed, std): identical values for any W.
  static ShardedWeights random(Runtime& rt, Communicator& comm, const LlamaConfig& config,
                               std::uint64_t seed, double std = 0.02, ZeroOptions options = {});

  ShardedWeights(ShardedWeights&&) noexcept = default;

  const LlamaConfig& config() const override { return config_; }
  const LayerLayout& layout() const override { return layout_; }
  void begin_schedule(const std::vector<UnitId>& schedule) override;
  const W* acquire(UnitId unit) override;
  void release(UnitId unit) override;
  bool device_memory() const override { return true; }

  // Accounting, for tests and the memory benchmark.
  std::size_t shard_bytes() const;          // this rank's shards of all units
  std::size_t gathered_peak_bytes() const;  // most bytes ever held in gathered buffers at once
  Index unit_elements(UnitId unit) const;   // unpadded
  Index shard_elements(UnitId unit) const;  // padded / W
  std::size_t live_units() const { return live_.size(); }  // gathered or being gathered

 private:
  struct UnitShard {
    UnitId id;
    Index elements;  // unpadded
    Index padded;    // multiple of the world size
    DeviceBuffer<W> shard;
  };
  struct Gathered {
    std::size_t schedule_index;
    UnitId unit;
    DeviceBuffer<W> buffer;
    Request request;
    bool acquired = false;
  };

  ShardedWeights(Device& device, Communicator& comm, const LlamaConfig& config,
                 ZeroOptions options);
  const UnitShard& unit(UnitId id) const;
  // Writes [first, first + count) of the shard of unit `u` with fill(host span, element index).
  template <class Fill>
  void write_shard(UnitShard& u, Index first, Index count, Fill fill);
  void issue_next();
  void prefetch();
  DeviceBuffer<W> take_buffer(Index elements);
  void trim_pool(Index incoming);

  Device* device_;
  Communicator* comm_;
  LlamaConfig config_;
  LayerLayout layout_;
  ZeroOptions options_;
  std::vector<UnitShard> units_;
  std::vector<UnitId> schedule_;
  std::size_t next_issue_ = 0, next_acquire_ = 0;
  std::deque<Gathered> live_;
  std::vector<DeviceBuffer<W>> pool_;
  std::size_t pool_bytes_ = 0, pool_peak_bytes_ = 0;
  Index budget_ = 0;  // gathered elements the schedule's window needs (begin_schedule)
};

}  // namespace zerolora
