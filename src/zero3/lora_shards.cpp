#include "zero3/lora_shards.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "core/error.hpp"

namespace zerolora {
namespace {

void copy(float* dst, const float* src, Index n) {
  std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
}

}  // namespace

LoraPartition::LoraPartition(const LoraLayout& layout, Index threshold, int world_size)
    : world(world_size) {
  for (const auto& e : layout.entries()) {
    if (static_cast<std::size_t>(e.layer) >= layers.size()) {
      layers.resize(static_cast<std::size_t>(e.layer) + 1);
      layers.back().begin = e.offset;
    }
    Layer& l = layers[static_cast<std::size_t>(e.layer)];
    l.end = e.offset + e.numel();
    if (e.numel() >= threshold) {
      l.partitioned.push_back({e.offset, e.numel(), l.partitioned_count});
      l.partitioned_count += e.numel();
    } else {
      l.replicated.push_back({e.offset, e.numel(), replicated});
      replicated += e.numel();
    }
  }
  for (Layer& l : layers) {
    l.shard = (l.partitioned_count + world - 1) / world;
    l.shard_offset = shard;
    shard += l.shard;
    partitioned += l.partitioned_count;
    largest_layer = std::max(largest_layer, l.end - l.begin);
  }
}

void LoraPartition::pack_replicated(const float* whole, float* packed) const {
  for (const Layer& l : layers)
    for (const Piece& p : l.replicated) copy(packed + p.packed, whole + p.offset, p.count);
}

void LoraPartition::unpack_replicated(const float* packed, float* whole) const {
  for (const Layer& l : layers)
    for (const Piece& p : l.replicated) copy(whole + p.offset, packed + p.packed, p.count);
}

void LoraPartition::shard_of(const float* whole, int rank, float* shard_out) const {
  std::fill(shard_out, shard_out + shard, 0.0f);
  for (const Layer& l : layers) {
    const Index first = rank * l.shard, last = first + l.shard;  // in the padded vector
    for (const Piece& p : l.partitioned) {
      const Index from = std::max(first, p.packed), to = std::min(last, p.packed + p.count);
      if (from < to)
        copy(shard_out + l.shard_offset + (from - first), whole + p.offset + (from - p.packed),
             to - from);
    }
  }
}

void LoraPartition::unshard(std::span<const float* const> shards, float* whole) const {
  for (const Layer& l : layers)
    for (const Piece& p : l.partitioned)
      for (Index i = 0; i < p.count;) {  // runs of the piece that lie in one rank's shard
        const Index at = p.packed + i;
        const Index rank = at / l.shard, within = at % l.shard;
        const Index n = std::min(p.count - i, l.shard - within);
        copy(whole + p.offset + i, shards[static_cast<std::size_t>(rank)] + l.shard_offset + within,
             n);
        i += n;
      }
}

LoraShards::LoraShards(Communicator& comm, const LoraLayout& layout, Index threshold)
    : comm_(comm),
      plan_(layout, threshold, comm.size()),
      replicated_params_(static_cast<std::size_t>(plan_.replicated)),
      replicated_grads_(static_cast<std::size_t>(plan_.replicated)),
      shard_params_(static_cast<std::size_t>(plan_.shard)),
      shard_grads_(static_cast<std::size_t>(plan_.shard)),
      layer_params_(static_cast<std::size_t>(plan_.largest_layer)),
      layer_grads_(static_cast<std::size_t>(plan_.largest_layer)) {
  Index largest_shard = 0;
  for (const auto& l : plan_.layers) largest_shard = std::max(largest_shard, l.shard);
  gathered_ = Buffer<float>(static_cast<std::size_t>(largest_shard * plan_.world));
  scattered_ = Buffer<float>(static_cast<std::size_t>(largest_shard * plan_.world));
  received_ = Buffer<float>(static_cast<std::size_t>(largest_shard));
  zero_grads();
}

void LoraShards::zero_grads() {
  replicated_grads_.zero();
  shard_grads_.zero();
}

void LoraShards::set_params(std::span<const float> whole) {
  flush();
  plan_.pack_replicated(whole.data(), replicated_params_.data());
  plan_.shard_of(whole.data(), comm_.rank(), shard_params_.data());
}

std::vector<float> LoraShards::gather(const Buffer<float>& replicated, const Buffer<float>& shard) {
  flush();
  std::vector<float> whole(static_cast<std::size_t>(plan_.replicated + plan_.partitioned), 0.0f);
  plan_.unpack_replicated(replicated.data(), whole.data());
  for (const auto& l : plan_.layers) {  // layer by layer: no second whole-size buffer
    if (l.shard == 0) continue;
    comm_.all_gather(shard.data() + l.shard_offset, gathered_.data(),
                     static_cast<std::size_t>(l.shard) * sizeof(float));
    for (const auto& p : l.partitioned)
      copy(whole.data() + p.offset, gathered_.data() + p.packed, p.count);
  }
  return whole;
}

Index LoraShards::resident_elements() const {
  return static_cast<Index>(replicated_params_.size() + replicated_grads_.size() +
                            shard_params_.size() + shard_grads_.size() + layer_params_.size() +
                            layer_grads_.size() + gathered_.size() + scattered_.size() +
                            received_.size());
}

void LoraShards::start_gather(int layer) {
  const auto& l = plan_.layers[static_cast<std::size_t>(layer)];
  gather_ = comm_.all_gather_async(shard_params_.data() + l.shard_offset, gathered_.data(),
                                   static_cast<std::size_t>(l.shard) * sizeof(float));
  gathering_ = layer;
}

void LoraShards::finish_reduce() {
  if (!reduce_) return;
  reduce_->wait();
  reduce_.reset();
  const auto& l = plan_.layers[static_cast<std::size_t>(reducing_)];
  float* into = shard_grads_.data() + l.shard_offset;
  const float* from = received_.data();
  for (Index i = 0; i < l.shard; ++i) into[i] += from[i];
  reducing_ = -1;
}

void LoraShards::flush() {
  if (gather_) gather_->wait();  // a prefetch nobody used: discarded
  gather_.reset();
  gathering_ = -1;
  finish_reduce();
}

LoraLayerView<float> LoraShards::acquire(int layer, bool with_grads) {
  if (held_ >= 0)
    throw InternalError("LoRA layer " + std::to_string(layer) + " acquired while layer " +
                        std::to_string(held_) + " is held");
  const int layers = static_cast<int>(plan_.layers.size());
  const auto& l = plan_.layers.at(static_cast<std::size_t>(layer));
  float* params = layer_params_.data();
  for (const auto& p : l.replicated)
    copy(params + (p.offset - l.begin), replicated_params_.data() + p.packed, p.count);
  if (l.shard > 0) {
    if (gathering_ != layer) {  // not prefetched (first layer of a pass, or mispredicted)
      if (gather_) gather_->wait();
      start_gather(layer);
    }
    gather_->wait();
    gather_.reset();
    gathering_ = -1;
    for (const auto& p : l.partitioned)
      copy(params + (p.offset - l.begin), gathered_.data() + p.packed, p.count);
  }
  // Prefetch the layer the model will most likely ask for next (every rank predicts the same):
  // forward goes up, then backward starts again from the top; backward goes down.
  const int next = with_grads ? layer - 1 : (layer + 1 < layers ? layer + 1 : layer);
  if (next >= 0 && plan_.layers[static_cast<std::size_t>(next)].shard > 0) start_gather(next);
  if (with_grads) std::fill(layer_grads_.data(), layer_grads_.data() + (l.end - l.begin), 0.0f);
  held_ = layer;
  return {params, with_grads ? layer_grads_.data() : nullptr, l.begin};
}

void LoraShards::release(int layer, bool grads_done) {
  held_ = -1;
  if (!grads_done) return;
  const auto& l = plan_.layers.at(static_cast<std::size_t>(layer));
  const float* grads = layer_grads_.data();
  for (const auto& p : l.replicated) {
    float* into = replicated_grads_.data() + p.packed;
    const float* from = grads + (p.offset - l.begin);
    for (Index i = 0; i < p.count; ++i) into[i] += from[i];
  }
  if (l.shard > 0) {  // reduce-scattered while the next layer's backward runs
    finish_reduce();
    const Index padded = l.shard * plan_.world;
    std::fill(scattered_.data(), scattered_.data() + padded, 0.0f);
    for (const auto& p : l.partitioned)
      copy(scattered_.data() + p.packed, grads + (p.offset - l.begin), p.count);
    reduce_ = comm_.reduce_scatter_async(scattered_.data(), received_.data(),
                                         static_cast<std::size_t>(l.shard), ElementType::kFloat);
    reducing_ = layer;
  }
}

}  // namespace zerolora
