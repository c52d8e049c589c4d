#include "train/lora_trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>

#include "core/error.hpp"
#include "core/precision.hpp"
#include "core/rng.hpp"
#include "data/collate.hpp"
#include "io/tensor_read.hpp"

namespace zerolora {
namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::uint64_t trainer_fingerprint(const LlamaConfig& c, const LoraLayout& layout,
                                  const TrainerOptions& o, int world) {
  std::uint64_t h = 0x5eed;
  for (double v : {double(c.hidden_size),
                   double(c.intermediate_size),
                   double(c.num_layers),
                   double(c.num_heads),
                   double(c.num_kv_heads),
                   double(c.head_dim),
                   double(c.vocab_size),
                   c.rms_norm_eps,
                   c.rope.theta,
                   double(c.tie_word_embeddings),
                   double(layout.size()),
                   double(layout.config().rank),
                   layout.config().alpha,
                   layout.config().dropout,
                   double(layout.config().use_rslora),
                   double(o.micro_batch),
                   o.adamw.beta1,
                   o.adamw.beta2,
                   o.adamw.eps,
                   o.adamw.weight_decay,
                   o.max_grad_norm,
                   double(o.seed),
                   double(o.persistence_threshold),
                   double(world)})
    h = hash_combine(h, std::bit_cast<std::uint64_t>(v));
  return h;
}

}  // namespace

Index count_targets(const std::vector<TokenSequence>& data, std::span<const Index> indices) {
  Index total = 0;
  for (Index i : indices) {
    const TokenSequence& s = data[static_cast<std::size_t>(i)];
    std::size_t at = 0;
    for (auto len : s.segment_lengths) {  // position t predicts labels[t + 1] within a segment
      for (std::size_t t = at + 1; t < at + static_cast<std::size_t>(len); ++t)
        total += s.labels[t] != kIgnoreIndex;
      at += static_cast<std::size_t>(len);
    }
  }
  return total;
}

template <class P>
LoraTrainer<P>::LoraTrainer(Runtime& rt, Communicator& comm, LlamaModel<P>& model,
                            const LoraLayout& layout, TrainerOptions options,
                            std::span<const Act> initial_params)
    : rt_(rt),
      comm_(comm),
      model_(model),
      layout_(layout),
      options_(options),
      replicated_opt_(0, options.adamw),
      shard_opt_(0, options.adamw) {
  if (static_cast<Index>(initial_params.size()) != layout.size())
    throw ShapeError("initial LoRA parameters hold " + std::to_string(initial_params.size()) +
                     " values, the layout needs " + std::to_string(layout.size()));
  if (options.micro_batch < 1) throw ConfigError("micro batch must be at least 1");
  require_same_on_all_ranks(comm, trainer_fingerprint(model.config(), layout, options, comm.size()),
                            "the model, LoRA or optimizer configuration");
  split_layout(options.persistence_threshold, replicated_slices_, partitioned_slices_);
  for (const auto& s : replicated_slices_) replicated_ += s.count;
  for (const auto& s : partitioned_slices_) partitioned_ += s.count;
  const Index world = comm.size();
  partitioned_padded_ = (partitioned_ + world - 1) / world * world;
  const Index shard = partitioned_padded_ / world;

  params_ = Buffer<Act>(static_cast<std::size_t>(layout.size()));
  grads_ = Buffer<Act>(static_cast<std::size_t>(layout.size()));
  std::memcpy(params_.data(), initial_params.data(), initial_params.size_bytes());
  replicated_params_ = Buffer<Act>(static_cast<std::size_t>(replicated_));
  replicated_grads_ = Buffer<Act>(static_cast<std::size_t>(replicated_));
  pack(replicated_slices_, params_.data(), replicated_params_.data());
  partitioned_params_full_ = Buffer<Act>(static_cast<std::size_t>(partitioned_padded_));
  partitioned_params_full_.zero();
  pack(partitioned_slices_, params_.data(), partitioned_params_full_.data());
  partitioned_grads_full_ = Buffer<Act>(static_cast<std::size_t>(partitioned_padded_));
  shard_params_ = Buffer<Act>(static_cast<std::size_t>(shard));
  shard_grads_ = Buffer<Act>(static_cast<std::size_t>(shard));
  if (shard > 0)
    std::memcpy(shard_params_.data(), partitioned_params_full_.data() + comm.rank() * shard,
                static_cast<std::size_t>(shard) * sizeof(Act));
  replicated_opt_ = AdamW<Act>(replicated_, options.adamw);
  shard_opt_ = AdamW<Act>(shard, options.adamw);
}

template <class P>
void LoraTrainer<P>::split_layout(Index threshold, std::vector<Slice>& replicated,
                                  std::vector<Slice>& partitioned) const {
  for (const auto& e : layout_.entries())
    (e.numel() >= threshold ? partitioned : replicated).push_back({e.offset, e.numel()});
}

template <class P>
void LoraTrainer<P>::pack(std::span<const Slice> slices, const Act* full, Act* packed) const {
  for (const auto& s : slices) {
    std::memcpy(packed, full + s.offset, static_cast<std::size_t>(s.count) * sizeof(Act));
    packed += s.count;
  }
}

template <class P>
void LoraTrainer<P>::unpack(std::span<const Slice> slices, const Act* packed, Act* full) const {
  for (const auto& s : slices) {
    std::memcpy(full + s.offset, packed, static_cast<std::size_t>(s.count) * sizeof(Act));
    packed += s.count;
  }
}

template <class P>
StepStats LoraTrainer<P>::step(const std::vector<TokenSequence>& data,
                               std::span<const Index> rank_samples, Index global_targets, double lr,
                               std::int64_t step_number) {
  StepStats stats;
  if (global_targets < 1) {  // nothing to learn from (every label masked): no update at all
    stats.loss = std::numeric_limits<double>::quiet_NaN();
    for (Index i : rank_samples) stats.tokens += data[static_cast<std::size_t>(i)].size();
    return stats;
  }
  grads_.zero();
  const double t0 = now_seconds();
  double loss_sum = 0;
  const StepKey key{options_.seed, static_cast<std::uint64_t>(step_number)};
  for (std::size_t at = 0; at < rank_samples.size();
       at += static_cast<std::size_t>(options_.micro_batch)) {
    const auto micro = rank_samples.subspan(
        at, std::min(rank_samples.size() - at, static_cast<std::size_t>(options_.micro_batch)));
    const Batch batch = make_batch(data, micro);
    stats.tokens += batch.size();
    stats.targets += batch.label_count();
    loss_sum += model_.forward_backward(batch, params_.span(), grads_.span(),
                                        1.0 / static_cast<double>(global_targets), key);
  }
  stats.compute_seconds = now_seconds() - t0;

  // Reduce gradients: replicated tensors all-reduced, partitioned ones reduce-scattered.
  const Index shard = partitioned_padded_ / comm_.size();
  pack(replicated_slices_, grads_.data(), replicated_grads_.data());
  partitioned_grads_full_.zero();
  pack(partitioned_slices_, grads_.data(), partitioned_grads_full_.data());
  auto loss_request = comm_.all_reduce_async(&loss_sum, 1, ElementType::kDouble);
  comm_.all_reduce(replicated_grads_.span());
  if (partitioned_padded_ > 0)
    comm_.reduce_scatter(partitioned_grads_full_.data(), shard_grads_.data(),
                         static_cast<std::size_t>(shard));
  loss_request->wait();
  stats.loss = loss_sum / static_cast<double>(global_targets);

  // Global norm: replicated part is identical on all ranks, shards add up.
  const double replicated_sq = std::pow(grad_norm<Act>(rt_, replicated_grads_.span()), 2);
  const double shard_sq =
      comm_.all_reduce_sum(std::pow(grad_norm<Act>(rt_, shard_grads_.span()), 2));
  stats.grad_norm = std::sqrt(replicated_sq + shard_sq);
  if (options_.max_grad_norm > 0) {
    const Act coef =
        static_cast<Act>(std::min(1.0, options_.max_grad_norm / (stats.grad_norm + 1e-6)));
    for (Act& g : replicated_grads_) g *= coef;
    for (Act& g : shard_grads_) g *= coef;
  }

  replicated_opt_.step(rt_, replicated_params_.span(), replicated_grads_.span(), lr);
  if (shard > 0)
    shard_opt_.step(rt_, shard_params_.span(), shard_grads_.span(), lr);
  else
    shard_opt_.set_steps(replicated_opt_.steps());
  if (partitioned_padded_ > 0)
    comm_.all_gather(shard_params_.data(), partitioned_params_full_.data(),
                     static_cast<std::size_t>(shard) * sizeof(Act));
  unpack(replicated_slices_, replicated_params_.data(), params_.data());
  unpack(partitioned_slices_, partitioned_params_full_.data(), params_.data());
  return stats;
}

template <class P>
double LoraTrainer<P>::evaluate(const std::vector<TokenSequence>& data,
                                std::span<const Index> rank_samples, Index micro_batch) {
  double loss_sum = 0;
  const auto step = static_cast<std::size_t>(std::max<Index>(1, micro_batch));
  for (std::size_t at = 0; at < rank_samples.size(); at += step) {
    const auto micro = rank_samples.subspan(at, std::min(rank_samples.size() - at, step));
    loss_sum += model_.loss(make_batch(data, micro), params_.span());
  }
  return comm_.all_reduce_sum(loss_sum);
}

template <class P>
void LoraTrainer<P>::write_state(SafetensorsWriter& writer) const {
  static_assert(std::is_same_v<Act, float>);
  auto& self = const_cast<LoraTrainer&>(*this);
  auto add = [&](const char* name, std::span<float> values) {
    writer.add<float>(name, DType::kF32, {static_cast<std::int64_t>(values.size())},
                      std::span<const float>(values));
  };
  add("replicated.exp_avg", self.replicated_opt_.first_moment());
  add("replicated.exp_avg_sq", self.replicated_opt_.second_moment());
  add("shard.exp_avg", self.shard_opt_.first_moment());
  add("shard.exp_avg_sq", self.shard_opt_.second_moment());
  writer.set_metadata("step", std::to_string(replicated_opt_.steps()));
  writer.set_metadata("rank", std::to_string(comm_.rank()));
  writer.set_metadata("world_size", std::to_string(comm_.size()));
  writer.set_metadata("persistence_threshold", std::to_string(options_.persistence_threshold));
}

template <class P>
void LoraTrainer<P>::read_state(std::span<const SafetensorsFile> files,
                                std::span<const Act> params) {
  static_assert(std::is_same_v<Act, float>);
  if (static_cast<Index>(params.size()) != layout_.size())
    throw ShapeError("checkpoint adapter holds " + std::to_string(params.size()) +
                     " values, this run needs " + std::to_string(layout_.size()));
  if (files.empty()) throw FormatError("checkpoint: no optimizer state files");
  const auto& meta0 = files[0].metadata();
  // Checkpoints written before the threshold was recorded used this run's.
  const Index old_threshold = meta0.count("persistence_threshold")
                                  ? std::stoll(meta0.at("persistence_threshold"))
                                  : options_.persistence_threshold;
  const std::int64_t steps = std::stoll(meta0.at("step"));
  std::vector<Slice> old_replicated, old_partitioned;
  split_layout(old_threshold, old_replicated, old_partitioned);
  Index old_replicated_count = 0, old_partitioned_count = 0;
  for (const auto& s : old_replicated) old_replicated_count += s.count;
  for (const auto& s : old_partitioned) old_partitioned_count += s.count;

  auto read = [](const SafetensorsFile& file, const char* name, Index expected, float* into) {
    const TensorInfo& t = file.at(name);
    if (t.numel() != expected)
      throw ShapeError(file.path().string() + ": '" + name + "' holds " +
                       std::to_string(t.numel()) + " values, expected " + std::to_string(expected));
    read_float_elements(file, t, 0, t.numel(), into);
  };
  // The moments, whole and in layout order: replicated ones from rank 0's file (every rank
  // holds the same), partitioned ones as the concatenation of the ranks' shards.
  const auto old_world = static_cast<Index>(files.size());
  const Index old_shard = (old_partitioned_count + old_world - 1) / old_world;
  std::vector<float> packed(
      static_cast<std::size_t>(std::max(old_replicated_count, old_shard * old_world)));
  Buffer<Act> whole_m(static_cast<std::size_t>(layout_.size())),
      whole_v(static_cast<std::size_t>(layout_.size()));
  for (auto [name, whole] : {std::pair{"exp_avg", &whole_m}, std::pair{"exp_avg_sq", &whole_v}}) {
    read(files[0], (std::string("replicated.") + name).c_str(), old_replicated_count,
         packed.data());
    unpack(old_replicated, packed.data(), whole->data());
    for (Index r = 0; r < old_world; ++r) {
      const SafetensorsFile& file = files[static_cast<std::size_t>(r)];
      if (std::stoll(file.metadata().at("step")) != steps)
        throw FormatError(file.path().string() + ": written at another step than rank 0's file");
      read(file, (std::string("shard.") + name).c_str(), old_shard, packed.data() + r * old_shard);
    }
    unpack(old_partitioned, packed.data(), whole->data());
  }

  // Split as this run does.
  const Index shard = partitioned_padded_ / comm_.size();
  Buffer<Act> padded(static_cast<std::size_t>(partitioned_padded_));
  for (auto [whole, replicated, sharded] :
       {std::tuple{&whole_m, replicated_opt_.first_moment(), shard_opt_.first_moment()},
        std::tuple{&whole_v, replicated_opt_.second_moment(), shard_opt_.second_moment()}}) {
    pack(replicated_slices_, whole->data(), replicated.data());
    padded.zero();
    pack(partitioned_slices_, whole->data(), padded.data());
    if (shard > 0)
      std::memcpy(sharded.data(), padded.data() + comm_.rank() * shard,
                  static_cast<std::size_t>(shard) * sizeof(Act));
  }
  replicated_opt_.set_steps(steps);
  shard_opt_.set_steps(steps);
  std::memcpy(params_.data(), params.data(), params.size_bytes());
  pack(replicated_slices_, params_.data(), replicated_params_.data());
  partitioned_params_full_.zero();
  pack(partitioned_slices_, params_.data(), partitioned_params_full_.data());
  if (shard > 0)
    std::memcpy(shard_params_.data(), partitioned_params_full_.data() + comm_.rank() * shard,
                static_cast<std::size_t>(shard) * sizeof(Act));
}

template class LoraTrainer<Fp32Policy>;
template class LoraTrainer<Bf16Policy>;

}  // namespace zerolora
