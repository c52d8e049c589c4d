#include "zero3/whole_model.hpp"

#include <utility>

#include "comm/communicator.hpp"
#include "core/bf16.hpp"
#include "model/llama_weights.hpp"
#include "zero3/sharded_weights.hpp"

namespace zerolora {
namespace {

// A one-rank store with the communicator it keeps a pointer to (and never gathers over).
template <class W>
class DeviceResidentModel final : public WeightProvider<W> {
 public:
  DeviceResidentModel(std::unique_ptr<Communicator> comm, ShardedWeights<W> store)
      : comm_(std::move(comm)), store_(std::move(store)) {}
  const LlamaConfig& config() const override { return store_.config(); }
  const LayerLayout& layout() const override { return store_.layout(); }
  void begin_schedule(const std::vector<UnitId>& schedule) override {
    store_.begin_schedule(schedule);
  }
  const W* acquire(UnitId unit) override { return store_.acquire(unit); }
  void release(UnitId unit) override { store_.release(unit); }
  bool resident() const override { return true; }
  bool device_memory() const override { return true; }

 private:
  std::unique_ptr<Communicator> comm_;  // declared first: outlives the store
  ShardedWeights<W> store_;
};

}  // namespace

template <class W>
std::unique_ptr<WeightProvider<W>> load_whole_model(Runtime& rt, const Checkpoint& checkpoint) {
  if (rt.device().host_accessible())
    return std::make_unique<LlamaWeights<W>>(load_llama_weights<W>(rt, checkpoint));
  auto comm = make_local_communicator();
  auto store = ShardedWeights<W>::load(rt, *comm, checkpoint);
  return std::make_unique<DeviceResidentModel<W>>(std::move(comm), std::move(store));
}

template <class W>
std::unique_ptr<WeightProvider<W>> random_whole_model(Runtime& rt, const LlamaConfig& config,
                                                      std::uint64_t seed, double std) {
  if (rt.device().host_accessible())
    return std::make_unique<LlamaWeights<W>>(random_llama_weights<W>(rt, config, seed, std));
  auto comm = make_local_communicator();
  auto store = ShardedWeights<W>::random(rt, *comm, config, seed, std);
  return std::make_unique<DeviceResidentModel<W>>(std::move(comm), std::move(store));
}

template std::unique_ptr<WeightProvider<float>> load_whole_model(Runtime&, const Checkpoint&);
template std::unique_ptr<WeightProvider<bf16>> load_whole_model(Runtime&, const Checkpoint&);
template std::unique_ptr<WeightProvider<float>> random_whole_model(Runtime&, const LlamaConfig&,
                                                                   std::uint64_t, double);
template std::unique_ptr<WeightProvider<bf16>> random_whole_model(Runtime&, const LlamaConfig&,
                                                                  std::uint64_t, double);

}  // namespace zerolora
