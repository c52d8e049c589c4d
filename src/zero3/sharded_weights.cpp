#include "zero3/sharded_weights.hpp"

#include <algorithm>
#include <exception>
#include <span>
#include <string>

#include "core/bf16.hpp"
#include "core/error.hpp"
#include "model/llama_weights.hpp"

namespace zerolora {
namespace {

int unit_index(const LlamaConfig& c, UnitId id) {
  switch (id.kind) {
    case Unit::kEmbedding:
      return 0;
    case Unit::kLayer:
      return 1 + id.layer;
    case Unit::kFinalNorm:
      return 1 + static_cast<int>(c.num_layers);
    case Unit::kLmHead:
      return c.tie_word_embeddings ? 0 : 2 + static_cast<int>(c.num_layers);
  }
  return -1;
}

UnitId unit_of(const ParamEntry& e) {
  return UnitId{e.unit, e.unit == Unit::kLayer ? e.layer : -1};
}

std::string unit_name(UnitId id) {
  switch (id.kind) {
    case Unit::kEmbedding:
      return "embedding";
    case Unit::kLayer:
      return "layer " + std::to_string(id.layer);
    case Unit::kFinalNorm:
      return "final norm";
    case Unit::kLmHead:
      return "lm_head";
  }
  return "?";
}

}  // namespace

template <class W>
ShardedWeights<W>::ShardedWeights(Device& device, Communicator& comm, const LlamaConfig& config,
                                  ZeroOptions options)
    : device_(&device), comm_(&comm), config_(config), layout_(config), options_(options) {
  // A store of one rank never calls its communicator: it serves as the whole model in a
  // device's memory (the GPU's weights below ZeRO-3, loaded without a host copy).
  if (comm.size() > 1 && comm.device_memory() == device.host_accessible())
    throw InternalError("ZeRO-3 store on " + device.name() + " given the communicator " +
                        comm.name() + ", which takes " +
                        (comm.device_memory() ? "device" : "host") + " buffers");
  const Index world = comm.size();
  const Index D = config.hidden_size, V = config.vocab_size;
  auto add = [&](UnitId id, Index elements) {
    const Index padded = (elements + world - 1) / world * world;
    DeviceBuffer<W> shard(device, static_cast<std::size_t>(padded / world));
    shard.zero();  // alignment gaps and world-size padding stay zero
    units_.push_back({id, elements, padded, std::move(shard)});
  };
  add({Unit::kEmbedding}, V * D);
  for (int l = 0; l < config.num_layers; ++l) add({Unit::kLayer, l}, layout_.size());
  add({Unit::kFinalNorm}, D);
  if (!config.tie_word_embeddings) add({Unit::kLmHead}, V * D);
}

template <class W>
template <class Fill>
void ShardedWeights<W>::write_shard(UnitShard& u, Index first, Index count, Fill fill) {
  W* dst = u.shard.data() + first;
  if (device_->host_accessible()) {
    fill(std::span<W>(dst, static_cast<std::size_t>(count)), Index{0});
    return;
  }
  // Bounded: loading a 70B shard never holds more than a chunk of it on the host.
  const Index chunk =
      std::max<Index>(1, options_.load_staging_bytes / static_cast<Index>(sizeof(W)));
  Buffer<W> staging(static_cast<std::size_t>(std::min(chunk, count)));
  for (Index done = 0; done < count; done += chunk) {
    const Index n = std::min(chunk, count - done);
    fill(std::span<W>(staging.data(), static_cast<std::size_t>(n)), done);
    device_->copy_to_device(dst + done, staging.data(), static_cast<std::size_t>(n) * sizeof(W));
  }
}

template <class W>
const typename ShardedWeights<W>::UnitShard& ShardedWeights<W>::unit(UnitId id) const {
  const int i = unit_index(config_, id);
  ZL_CHECK(i >= 0 && i < static_cast<int>(units_.size()));
  return units_[static_cast<std::size_t>(i)];
}

template <class W>
ShardedWeights<W> ShardedWeights<W>::load(Runtime& rt, Communicator& comm,
                                          const Checkpoint& checkpoint, ZeroOptions options) {
  const auto table = validate_checkpoint(checkpoint);  // a wrong shape before any allocation
  ShardedWeights store(rt.device(), comm, checkpoint.config(), options);
  for (const auto& entry : table) {
    UnitShard& u =
        store.units_[static_cast<std::size_t>(unit_index(store.config_, unit_of(entry)))];
    const Index s = u.padded / comm.size(), lo = comm.rank() * s, hi = lo + s;
    const Index a = std::max(lo, entry.offset), b = std::min(hi, entry.offset + entry.numel());
    if (a < b)
      store.write_shard(u, a - lo, b - a, [&](std::span<W> out, Index done) {
        read_checkpoint_elements(rt, checkpoint, entry, a - entry.offset + done,
                                 static_cast<Index>(out.size()), out.data());
      });
  }
  return store;
}

template <class W>
ShardedWeights<W> ShardedWeights<W>::random(Runtime& rt, Communicator& comm,
                                            const LlamaConfig& config, std::uint64_t seed,
                                            double std, ZeroOptions options) {
  ShardedWeights store(rt.device(), comm, config, options);
  const auto table = parameter_table(config);
  for (std::size_t t = 0; t < table.size(); ++t) {
    const auto& entry = table[t];
    UnitShard& u = store.units_[static_cast<std::size_t>(unit_index(config, unit_of(entry)))];
    const Index s = u.padded / comm.size(), lo = comm.rank() * s, hi = lo + s;
    const Index a = std::max(lo, entry.offset), b = std::min(hi, entry.offset + entry.numel());
    if (a >= b) continue;
    store.write_shard(u, a - lo, b - a, [&](std::span<W> out, Index done) {
      const Index first = a - entry.offset + done, n = static_cast<Index>(out.size());
      W* dst = out.data();
#pragma omp parallel for num_threads(rt.threads()) schedule(static)
      for (Index i = 0; i < n; ++i)
        dst[i] = convert_to<W>(random_weight(seed, t, entry, first + i, std));
    });
  }
  return store;
}

template <class W>
void ShardedWeights<W>::begin_schedule(const std::vector<UnitId>& schedule) {
  if (comm_->size() == 1) return;
  if (!live_.empty())
    throw InternalError("ZeRO-3 schedule started while " + std::to_string(live_.size()) +
                        " gathered unit(s) of the previous one are still live");
  schedule_ = schedule;
  next_issue_ = next_acquire_ = 0;
  // The window: the most padded elements among prefetch_depth + 1 consecutive units (read
  // cyclically), within the live cap (which always lets one unit through).
  const std::size_t ahead = 1 + static_cast<std::size_t>(std::max(0, options_.prefetch_depth));
  Index window = 0, largest = 0;
  for (std::size_t i = 0; i < schedule_.size(); ++i) {
    Index sum = 0;
    for (std::size_t k = 0; k < std::min(ahead, schedule_.size()); ++k)
      sum += unit(schedule_[(i + k) % schedule_.size()]).padded;
    window = std::max(window, sum);
    largest = std::max(largest, unit(schedule_[i]).padded);
  }
  budget_ = options_.max_live_elements > 0
                ? std::min(window, std::max(options_.max_live_elements, largest))
                : window;
  prefetch();
}

// A pooled buffer of exactly this unit size (the layers share one size, the embedding and the
// lm_head another), or a new one, after freeing what the budget no longer allows. Reusing a
// larger buffer would keep the larger size alive through units that need less.
template <class W>
DeviceBuffer<W> ShardedWeights<W>::take_buffer(Index elements) {
  const auto fit = std::find_if(pool_.begin(), pool_.end(), [&](const DeviceBuffer<W>& b) {
    return static_cast<Index>(b.size()) == elements;
  });
  if (fit != pool_.end()) {
    DeviceBuffer<W> buffer = std::move(*fit);
    pool_.erase(fit);
    return buffer;
  }
  trim_pool(elements);
  DeviceBuffer<W> buffer(*device_, static_cast<std::size_t>(elements));
  pool_bytes_ += buffer.bytes();
  pool_peak_bytes_ = std::max(pool_peak_bytes_, pool_bytes_);
  return buffer;
}

// Keeps the pooled buffers that the next prefetch_depth + 1 gathers will take (the schedule
// read as repeating: the next step starts it over) as long as they, the live units and
// `incoming` elements about to be allocated fit the budget: the most elements the schedule
// ever has in use and in flight at once. Gathered memory then never exceeds that window.
template <class W>
void ShardedWeights<W>::trim_pool(Index incoming) {
  Index held = incoming;
  for (const auto& g : live_) held += static_cast<Index>(g.buffer.size());
  std::vector<bool> keep(pool_.size(), false);
  const std::size_t ahead = 1 + static_cast<std::size_t>(std::max(0, options_.prefetch_depth));
  for (std::size_t k = 0; k < ahead && !schedule_.empty(); ++k) {
    const Index need = unit(schedule_[(next_issue_ + k) % schedule_.size()]).padded;
    for (std::size_t i = 0; i < pool_.size(); ++i)
      if (!keep[i] && static_cast<Index>(pool_[i].size()) == need && held + need <= budget_) {
        keep[i] = true;
        held += need;
        break;
      }
  }
  std::vector<DeviceBuffer<W>> kept;
  for (std::size_t i = 0; i < pool_.size(); ++i) {
    if (keep[i])
      kept.push_back(std::move(pool_[i]));
    else
      pool_bytes_ -= pool_[i].bytes();
  }
  pool_ = std::move(kept);
}

template <class W>
void ShardedWeights<W>::issue_next() {
  const UnitId id = schedule_[next_issue_];
  const UnitShard& u = unit(id);
  Gathered g{next_issue_, id, take_buffer(u.padded), nullptr, false};
  g.request = comm_->all_gather_async(u.shard.data(), g.buffer.data(), u.shard.bytes());
  live_.push_back(std::move(g));
  ++next_issue_;
}

template <class W>
void ShardedWeights<W>::prefetch() {
  Index live_elements = 0;
  for (const auto& g : live_) live_elements += unit(g.unit).padded;
  const std::size_t limit =
      next_acquire_ + static_cast<std::size_t>(std::max(0, options_.prefetch_depth));
  while (next_issue_ < schedule_.size() && next_issue_ <= limit) {
    const Index need = unit(schedule_[next_issue_]).padded;
    if (options_.max_live_elements > 0 && !live_.empty() &&
        live_elements + need > options_.max_live_elements)
      break;
    issue_next();
    live_elements += need;
  }
}

template <class W>
const W* ShardedWeights<W>::acquire(UnitId id) {
  if (comm_->size() == 1) return unit(id).shard.data();
  if (next_acquire_ >= schedule_.size() || !(schedule_[next_acquire_] == id))
    throw InternalError("ZeRO-3: " + unit_name(id) +
                        " acquired out of the announced schedule order");
  while (next_issue_ <= next_acquire_) issue_next();
  auto it = std::find_if(live_.begin(), live_.end(),
                         [&](const Gathered& g) { return g.schedule_index == next_acquire_; });
  ZL_CHECK(it != live_.end());
  it->request->wait();
  it->acquired = true;
  const W* gathered = it->buffer.data();  // before prefetch(): a push_back ends `it`'s validity
  prefetch();                             // up to prefetch_depth units beyond this one
  ++next_acquire_;
  return gathered;
}

template <class W>
void ShardedWeights<W>::release(UnitId id) {
  if (comm_->size() == 1) return;
  auto it = std::find_if(live_.begin(), live_.end(),
                         [&](const Gathered& g) { return g.acquired && g.unit == id; });
  ZL_CHECK(it != live_.end());
  pool_.push_back(std::move(it->buffer));
  live_.erase(it);
  // A rank unwinding an error starts no gather: the other ranks may never join it (they may
  // wait for this rank elsewhere), and the gathers already in flight are waited for as the
  // store is destroyed. Any error in flight counts, even one a caller's destructor is handling:
  // a store unwound through is not used again (begin_schedule refuses its live units).
  if (std::uncaught_exceptions() > 0) return;
  prefetch();
  trim_pool(0);
}

template <class W>
std::size_t ShardedWeights<W>::shard_bytes() const {
  std::size_t total = 0;
  for (const auto& u : units_) total += u.shard.bytes();
  return total;
}

template <class W>
std::size_t ShardedWeights<W>::gathered_peak_bytes() const {
  return pool_peak_bytes_;
}

template <class W>
Index ShardedWeights<W>::unit_elements(UnitId id) const {
  return unit(id).elements;
}

template <class W>
Index ShardedWeights<W>::shard_elements(UnitId id) const {
  return unit(id).padded / comm_->size();
}

template class ShardedWeights<float>;
template class ShardedWeights<bf16>;
template class ShardedWeights<double>;

}  // namespace zerolora
