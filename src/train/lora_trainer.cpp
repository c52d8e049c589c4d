#include "train/lora_trainer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

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
      shards_(comm, layout, options.persistence_threshold),
      replicated_opt_(shards_.partition().replicated, options.adamw),
      shard_opt_(shards_.partition().shard, options.adamw) {
  if (static_cast<Index>(initial_params.size()) != layout.size())
    throw ShapeError("initial LoRA parameters hold " + std::to_string(initial_params.size()) +
                     " values, the layout needs " + std::to_string(layout.size()));
  if (options.micro_batch < 1) throw ConfigError("micro batch must be at least 1");
  shards_.set_params(initial_params);
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
  shards_.zero_grads();
  const double t0 = now_seconds();
  double loss_sum = 0;
  const StepKey key{options_.seed, static_cast<std::uint64_t>(step_number)};
  // This rank's first micro-batch whose loss is not finite, for the message.
  std::int64_t bad_micro = -1, bad_site = -1, bad_sample = -1, micro_index = 0;
  for (std::size_t at = 0; at < rank_samples.size();
       at += static_cast<std::size_t>(options_.micro_batch), ++micro_index) {
    const auto micro = rank_samples.subspan(
        at, std::min(rank_samples.size() - at, static_cast<std::size_t>(options_.micro_batch)));
    const Batch batch = make_batch(data, micro);
    stats.tokens += batch.size();
    stats.targets += batch.label_count();
    const bool poison = step_number == options_.poison_step && comm_.rank() == 0 && at == 0;
    model_.options().poison_layer_output = poison ? options_.poison_layer : -1;
    const double micro_loss =
        model_.forward_backward(batch, shards_, 1.0 / static_cast<double>(global_targets), key);
    model_.options().poison_layer_output = -1;
    if (!std::isfinite(micro_loss) && bad_micro < 0) {
      bad_micro = micro_index;
      bad_site = model_.nonfinite_site();
      bad_sample = micro.front();
    }
    loss_sum += micro_loss;
  }
  shards_.flush();  // the last layer's reduce-scatter
  stats.compute_seconds = now_seconds() - t0;

  // Replicated gradients are all-reduced; partitioned ones were reduce-scattered layer by layer.
  const auto replicated_grads = shards_.replicated_grads();
  const auto shard_grads = shards_.shard_grads();
  auto loss_request = comm_.all_reduce_async(&loss_sum, 1, ElementType::kDouble);
  comm_.all_reduce(replicated_grads);
  loss_request->wait();
  stats.loss = loss_sum / static_cast<double>(global_targets);

  // Global norm: replicated part is identical on all ranks, shards add up.
  const double replicated_sq = std::pow(grad_norm<Act>(rt_, replicated_grads), 2);
  const double shard_sq = comm_.all_reduce_sum(std::pow(grad_norm<Act>(rt_, shard_grads), 2));
  stats.grad_norm = std::sqrt(replicated_sq + shard_sq);
  // Both were summed over the ranks, so a NaN or Inf anywhere is seen by every rank: they
  // all skip the update together, with no extra communication on the finite path.
  if (!std::isfinite(stats.loss) || !std::isfinite(stats.grad_norm)) {
    stats.finite = false;
    stats.nonfinite = describe_nonfinite(step_number, stats, bad_micro, bad_site, bad_sample);
    return stats;
  }
  if (options_.max_grad_norm > 0) {
    const auto coef = static_cast<Act>(clip_coefficient(stats.grad_norm, options_.max_grad_norm));
    for (Act& g : replicated_grads) g *= coef;
    for (Act& g : shard_grads) g *= coef;
  }

  replicated_opt_.step(rt_, shards_.replicated_params(), replicated_grads, lr);
  if (!shard_grads.empty())
    shard_opt_.step(rt_, shards_.shard_params(), shard_grads, lr);
  else
    shard_opt_.set_steps(replicated_opt_.steps());
  return stats;
}

template <class P>
std::string LoraTrainer<P>::describe_nonfinite(std::int64_t step_number, const StepStats& stats,
                                               std::int64_t bad_micro, std::int64_t site,
                                               std::int64_t first_sample) {
  auto number = [](double v) {
    char text[32];
    std::snprintf(text, sizeof(text), "%.6g", v);
    return std::string(text);
  };
  std::string text = "step " + std::to_string(step_number + 1) + ": the loss is " +
                     number(stats.loss) + " and the gradient norm " + number(stats.grad_norm);
  const std::int64_t mine[3] = {bad_micro, site, first_sample};
  std::vector<std::int64_t> all(3 * static_cast<std::size_t>(comm_.size()));
  comm_.all_gather(mine, all.data(), sizeof(mine));
  for (int r = 0; r < comm_.size(); ++r) {
    const std::int64_t* rec = all.data() + 3 * r;
    if (rec[0] < 0) continue;
    return text + "; the first non-finite loss came from micro-batch " + std::to_string(rec[0]) +
           (comm_.size() > 1 ? " of rank " + std::to_string(r) : std::string()) +
           " (starting at training sequence " + std::to_string(rec[2]) +
           "), and its forward pass first went non-finite in " +
           describe_nonfinite_site(static_cast<int>(rec[1]), model_.config().num_layers);
  }
  // Every loss was finite: the backward pass made it. The gradients whole, in layout order,
  // searched in the order backward computes them (the last layer first).
  const std::vector<float> whole = shards_.gather_grads();
  const auto& entries = layout_.entries();
  for (auto e = entries.rbegin(); e != entries.rend(); ++e)
    for (Index i = 0; i < e->numel(); ++i)
      if (!std::isfinite(whole[static_cast<std::size_t>(e->offset + i)]))
        return text +
               "; every micro-batch's loss was finite: the backward pass went non-finite, "
               "first (in backward order) in the gradient of '" +
               e->name + "'";
  return text;
}

template <class P>
double LoraTrainer<P>::evaluate(const std::vector<TokenSequence>& data,
                                std::span<const Index> rank_samples, Index micro_batch) {
  double loss_sum = 0;
  const auto step = static_cast<std::size_t>(std::max<Index>(1, micro_batch));
  for (std::size_t at = 0; at < rank_samples.size(); at += step) {
    const auto micro = rank_samples.subspan(at, std::min(rank_samples.size() - at, step));
    loss_sum += model_.loss(make_batch(data, micro), shards_);
  }
  shards_.flush();  // an unused prefetch
  return comm_.all_reduce_sum(loss_sum);
}

template <class P>
void LoraTrainer<P>::write_state(SafetensorsWriter& writer) const {
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
  writer.set_metadata("partitioning", "per-layer");
}

template <class P>
void LoraTrainer<P>::read_state(std::span<const SafetensorsFile> files,
                                std::span<const Act> params) {
  if (static_cast<Index>(params.size()) != layout_.size())
    throw ShapeError("checkpoint adapter holds " + std::to_string(params.size()) +
                     " values, this run needs " + std::to_string(layout_.size()));
  if (files.empty()) throw FormatError("checkpoint: no optimizer state files");
  const auto& meta = files[0].metadata();
  // Older checkpoints partitioned one flat vector instead of layer by layer: the same thing
  // when nothing was partitioned (every LoRA tensor under the threshold, the common case).
  const bool per_layer = meta.count("partitioning") && meta.at("partitioning") == "per-layer";
  if (!per_layer && files[0].at("shard.exp_avg").numel() > 0)
    throw FormatError(files[0].path().string() +
                      ": optimizer state from an older zerolora that partitioned LoRA tensors "
                      "as one flat vector; resume with the version that wrote it, or start "
                      "from its adapter");
  const std::int64_t steps = std::stoll(meta.at("step"));
  // How the writing run split the layout, from its threshold and world size.
  const Index old_threshold =
      per_layer ? std::stoll(meta.at("persistence_threshold")) : std::numeric_limits<Index>::max();
  const LoraPartition old(layout_, old_threshold, static_cast<int>(files.size()));
  auto read = [](const SafetensorsFile& file, const std::string& name, Index expected,
                 float* into) {
    const TensorInfo& t = file.at(name);
    if (t.numel() != expected)
      throw ShapeError(file.path().string() + ": '" + name + "' holds " +
                       std::to_string(t.numel()) + " values, expected " + std::to_string(expected));
    read_float_elements(file, t, 0, t.numel(), into);
  };
  // Each moment whole, in layout order (replicated part from rank 0's file: every rank holds
  // the same), then split as this run splits it.
  const auto world = static_cast<std::size_t>(old.world);
  std::vector<float> whole(static_cast<std::size_t>(layout_.size()));
  std::vector<float> replicated(static_cast<std::size_t>(old.replicated));
  std::vector<std::vector<float>> shards(world, std::vector<float>(old.shard));
  std::vector<const float*> shard_ptrs;
  for (const auto& s : shards) shard_ptrs.push_back(s.data());
  for (const bool second : {false, true}) {
    const std::string name = second ? "exp_avg_sq" : "exp_avg";
    read(files[0], "replicated." + name, old.replicated, replicated.data());
    for (std::size_t r = 0; r < world; ++r) {
      if (std::stoll(files[r].metadata().at("step")) != steps)
        throw FormatError(files[r].path().string() + ": written at another step than rank 0's");
      read(files[r], "shard." + name, old.shard, shards[r].data());
    }
    old.unpack_replicated(replicated.data(), whole.data());
    old.unshard(shard_ptrs, whole.data());
    const std::span<float> replicated_moment =
        second ? replicated_opt_.second_moment() : replicated_opt_.first_moment();
    const std::span<float> shard_moment =
        second ? shard_opt_.second_moment() : shard_opt_.first_moment();
    shards_.partition().pack_replicated(whole.data(), replicated_moment.data());
    shards_.partition().shard_of(whole.data(), comm_.rank(), shard_moment.data());
  }
  replicated_opt_.set_steps(steps);
  shard_opt_.set_steps(steps);
  shards_.set_params(params);
}

template class LoraTrainer<Fp32Policy>;
template class LoraTrainer<Bf16Policy>;

}  // namespace zerolora
