#include "data/sampler.hpp"

#include <algorithm>
#include <numeric>
#include <string>

#include "core/error.hpp"
#include "core/rng.hpp"

namespace zerolora {
namespace {

void shuffle(std::vector<Index>& v, std::uint64_t key) {
  CounterRng rng(key);
  for (std::size_t i = v.size(); i > 1; --i) {
    const std::size_t j = static_cast<std::size_t>(rng.next_u64() % i);
    std::swap(v[i - 1], v[j]);
  }
}

}  // namespace

DistributedSampler::DistributedSampler(std::vector<Index> lengths, SamplerOptions options)
    : lengths_(std::move(lengths)), options_(options) {
  if (lengths_.empty()) throw ConfigError("the training set is empty");
  if (options_.world < 1 || options_.rank < 0 || options_.rank >= options_.world)
    throw ConfigError("rank " + std::to_string(options_.rank) + " is outside world size " +
                      std::to_string(options_.world));
  if (options_.global_batch < 1 || options_.global_batch % options_.world != 0)
    throw ConfigError("global batch " + std::to_string(options_.global_batch) +
                      " must be a positive multiple of " + "the world size " +
                      std::to_string(options_.world));
  if (options_.drop_last && options_.global_batch > size())
    throw ConfigError("global batch " + std::to_string(options_.global_batch) + " exceeds the " +
                      std::to_string(size()) +
                      " training samples and drop_last is set: no step would run");
  const Index whole_set = (size() + options_.world - 1) / options_.world * options_.world;
  batch_ = std::min(options_.global_batch, whole_set);
}

Index DistributedSampler::steps_per_epoch() const {
  const Index g = batch_;
  return options_.drop_last ? size() / g : (size() + g - 1) / g;
}

std::vector<Index> DistributedSampler::epoch_order(Index epoch) const {
  if (epoch == cached_epoch_) return cached_order_;
  std::vector<Index> order(lengths_.size());
  std::iota(order.begin(), order.end(), Index{0});
  const std::uint64_t key = hash_combine(options_.seed, static_cast<std::uint64_t>(epoch));
  if (options_.shuffle) shuffle(order, key);
  if (options_.group_by_length) {
    const Index mega =
        std::max<Index>(1, std::min<Index>(50, size() / (options_.global_batch * 4))) *
        options_.global_batch;
    for (Index start = 0; start < size(); start += mega) {
      auto first = order.begin() + start, last = order.begin() + std::min(size(), start + mega);
      std::stable_sort(first, last, [this](Index a, Index b) { return lengths_[a] > lengths_[b]; });
    }
  }
  cached_epoch_ = epoch;
  cached_order_ = order;
  return order;
}

std::vector<Index> DistributedSampler::global_batch(Index epoch, Index step) const {
  if (step < 0 || step >= steps_per_epoch())
    throw ConfigError("step " + std::to_string(step) + " is outside the epoch's " +
                      std::to_string(steps_per_epoch()) + " steps");
  const auto order = epoch_order(epoch);
  std::vector<Index> batch;
  batch.reserve(static_cast<std::size_t>(batch_));
  for (Index i = 0; i < batch_; ++i)
    batch.push_back(order[static_cast<std::size_t>((step * batch_ + i) % size())]);
  return batch;
}

std::vector<Index> DistributedSampler::rank_batch(Index epoch, Index step) const {
  const auto batch = global_batch(epoch, step);
  const Index share = per_rank();
  return {batch.begin() + options_.rank * share, batch.begin() + (options_.rank + 1) * share};
}

}  // namespace zerolora
