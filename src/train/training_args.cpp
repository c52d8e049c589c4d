#include "train/training_args.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.hpp"

namespace zerolora {
namespace {

using json = nlohmann::json;

std::string format_number(double v) {
  std::string s = std::to_string(v);
  if (s.find('.') != std::string::npos) {
    s.erase(s.find_last_not_of('0') + 1);
    if (s.back() == '.') s.pop_back();
  }
  return s;
}

class DsReader {
 public:
  DsReader(TrainingArguments& args, std::string label) : args_(args), label_(std::move(label)) {}

  // nullopt for "auto" or absent; throws for anything but a number.
  std::optional<double> number(const json& parent, const char* key, const std::string& path) const {
    if (!parent.contains(key) || parent[key].is_null()) return std::nullopt;
    const json& v = parent[key];
    if (v.is_string() && v.get<std::string>() == "auto") return std::nullopt;
    if (!v.is_number())
      throw ConfigError(label_ + ": '" + path + "' must be a number or \"auto\", got " + v.dump());
    return v.get<double>();
  }

  std::optional<bool> boolean(const json& parent, const char* key, const std::string& path) const {
    if (!parent.contains(key) || parent[key].is_null()) return std::nullopt;
    const json& v = parent[key];
    if (v.is_string() && v.get<std::string>() == "auto") return std::nullopt;
    if (!v.is_boolean())
      throw ConfigError(label_ + ": '" + path + "' must be true, false or \"auto\", got " +
                        v.dump());
    return v.get<bool>();
  }

  // A concrete config value must agree with an explicitly given flag; otherwise it wins.
  template <class T>
  void merge(T& arg, const std::string& flag, std::optional<double> value,
             const std::string& path) const {
    if (!value) return;
    const T v = static_cast<T>(*value);
    if (args_.is_set(flag) && v != arg)
      throw ConfigError(label_ + ": '" + path + "' is " + format_number(*value) + " but --" + flag +
                        " is " + format_number(static_cast<double>(arg)) +
                        "; make them agree, or set the config value to \"auto\"");
    arg = v;
  }

  const std::string& label() const { return label_; }

 private:
  TrainingArguments& args_;
  std::string label_;
};

void resolve_batches(const json& ds, TrainingArguments& a, int world, const DsReader& r) {
  const auto micro =
      r.number(ds, "train_micro_batch_size_per_gpu", "train_micro_batch_size_per_gpu");
  const auto accum = r.number(ds, "gradient_accumulation_steps", "gradient_accumulation_steps");
  const auto total = r.number(ds, "train_batch_size", "train_batch_size");
  r.merge(a.per_device_train_batch_size, "per_device_train_batch_size", micro,
          "train_micro_batch_size_per_gpu");
  r.merge(a.gradient_accumulation_steps, "gradient_accumulation_steps", accum,
          "gradient_accumulation_steps");
  if (!total) return;
  const auto t = static_cast<std::int64_t>(*total);
  // DeepSpeed derives the one missing factor from train_batch_size.
  if (micro && !accum && !a.is_set("gradient_accumulation_steps")) {
    const std::int64_t per_step = a.per_device_train_batch_size * world;
    if (t % per_step != 0)
      throw ConfigError(r.label() + ": train_batch_size " + std::to_string(t) +
                        " is not a multiple of " + "train_micro_batch_size_per_gpu " +
                        std::to_string(a.per_device_train_batch_size) + " x world size " +
                        std::to_string(world) + " = " + std::to_string(per_step));
    a.gradient_accumulation_steps = t / per_step;
    return;
  }
  if (!micro && accum && !a.is_set("per_device_train_batch_size")) {
    const std::int64_t per_micro = a.gradient_accumulation_steps * world;
    if (t % per_micro != 0)
      throw ConfigError(r.label() + ": train_batch_size " + std::to_string(t) +
                        " is not a multiple of " + "gradient_accumulation_steps " +
                        std::to_string(a.gradient_accumulation_steps) + " x world size " +
                        std::to_string(world) + " = " + std::to_string(per_micro));
    a.per_device_train_batch_size = t / per_micro;
    return;
  }
  const std::int64_t product =
      a.per_device_train_batch_size * a.gradient_accumulation_steps * world;
  if (t != product)
    throw ConfigError(
        r.label() + ": train_batch_size " + std::to_string(t) +
        " != train_micro_batch_size_per_gpu " + std::to_string(a.per_device_train_batch_size) +
        " x gradient_accumulation_steps " + std::to_string(a.gradient_accumulation_steps) +
        " x world size " + std::to_string(world) + " = " + std::to_string(product));
}

void resolve_optimizer(const json& ds, TrainingArguments& a, const DsReader& r) {
  if (!ds.contains("optimizer") || ds["optimizer"].is_null()) return;
  const json& opt = ds["optimizer"];
  if (!opt.is_object()) throw ConfigError(r.label() + ": 'optimizer' must be an object");
  std::string type = opt.value("type", "AdamW");
  std::string lower = type;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  const json params = opt.value("params", json::object());
  if (lower == "adam" && params.contains("adam_w_mode") && params["adam_w_mode"] == false)
    throw UnsupportedError(
        r.label() +
        ": optimizer Adam with adam_w_mode false (L2 weight decay) is not supported; "
        "zerolora trains with AdamW");
  if (lower != "adamw" && lower != "adam")
    throw UnsupportedError(r.label() + ": optimizer type '" + type +
                           "' is not supported (AdamW, or Adam in AdamW mode)");
  r.merge(a.learning_rate, "learning_rate", r.number(params, "lr", "optimizer.params.lr"),
          "optimizer.params.lr");
  r.merge(a.weight_decay, "weight_decay",
          r.number(params, "weight_decay", "optimizer.params.weight_decay"),
          "optimizer.params.weight_decay");
  r.merge(a.adam_epsilon, "adam_epsilon", r.number(params, "eps", "optimizer.params.eps"),
          "optimizer.params.eps");
  if (params.contains("betas") && !(params["betas"].is_string() && params["betas"] == "auto")) {
    const json& betas = params["betas"];
    if (!betas.is_array() || betas.size() != 2 || !betas[0].is_number() || !betas[1].is_number())
      throw ConfigError(r.label() +
                        ": 'optimizer.params.betas' must be [beta1, beta2] or \"auto\"");
    r.merge(a.adam_beta1, "adam_beta1", betas[0].get<double>(), "optimizer.params.betas[0]");
    r.merge(a.adam_beta2, "adam_beta2", betas[1].get<double>(), "optimizer.params.betas[1]");
  }
}

std::optional<DeepSpeedScheduler> resolve_scheduler(const json& ds, const DsReader& r) {
  if (!ds.contains("scheduler") || ds["scheduler"].is_null()) return std::nullopt;
  const json& sched = ds["scheduler"];
  if (!sched.is_object() || !sched.contains("type") || !sched["type"].is_string())
    throw ConfigError(r.label() + ": 'scheduler' needs a string 'type'");
  const std::string type = sched["type"].get<std::string>();
  DeepSpeedScheduler s;
  if (type == "WarmupLR")
    s.kind = LrSchedule::Kind::kWarmupLR;
  else if (type == "WarmupDecayLR")
    s.kind = LrSchedule::Kind::kWarmupDecayLR;
  else if (type == "WarmupCosineLR")
    s.kind = LrSchedule::Kind::kWarmupCosineLR;
  else
    throw UnsupportedError(
        r.label() + ": scheduler '" + type +
        "' is not supported (WarmupLR, WarmupDecayLR, WarmupCosineLR; or use --lr_scheduler_type)");
  const json params = sched.value("params", json::object());
  s.warmup_min_lr = r.number(params, "warmup_min_lr", "scheduler.params.warmup_min_lr");
  s.warmup_max_lr = r.number(params, "warmup_max_lr", "scheduler.params.warmup_max_lr");
  s.warmup_min_ratio = r.number(params, "warmup_min_ratio", "scheduler.params.warmup_min_ratio");
  s.cos_min_ratio = r.number(params, "cos_min_ratio", "scheduler.params.cos_min_ratio");
  if (auto v = r.number(params, "warmup_num_steps", "scheduler.params.warmup_num_steps"))
    s.warmup_num_steps = static_cast<std::int64_t>(*v);
  if (auto v = r.number(params, "total_num_steps", "scheduler.params.total_num_steps"))
    s.total_num_steps = static_cast<std::int64_t>(*v);
  if (params.contains("warmup_type")) {
    const std::string wt =
        params["warmup_type"].is_string() ? params["warmup_type"].get<std::string>() : "";
    if (wt != "log" && wt != "linear")
      throw ConfigError(r.label() +
                        ": 'scheduler.params.warmup_type' must be \"log\" or \"linear\"");
    s.log_warmup = wt == "log";
  }
  return s;
}

void resolve_zero(const json& ds, TrainingArguments& a, std::int64_t hidden,
                  std::int64_t layer_elements, const DsReader& r, DeepSpeedResult& out) {
  if (!ds.contains("zero_optimization") || ds["zero_optimization"].is_null()) {
    a.zero_stage = 0;  // DeepSpeed without zero_optimization: no partitioning
    return;
  }
  const json& z = ds["zero_optimization"];
  if (!z.is_object()) throw ConfigError(r.label() + ": 'zero_optimization' must be an object");
  if (auto stage = r.number(z, "stage", "zero_optimization.stage")) {
    const int s = static_cast<int>(*stage);
    if (s < 0 || s > 3 || *stage != s)
      throw ConfigError(r.label() + ": zero_optimization.stage must be 0, 1, 2 or 3");
    a.zero_stage = s;
  }
  for (const char* key : {"offload_param", "offload_optimizer"}) {
    if (!z.contains(key) || z[key].is_null()) continue;
    const std::string device = z[key].value("device", "none");
    if (device == "nvme")
      throw UnsupportedError(r.label() + ": zero_optimization." + key +
                             " to nvme is not supported");
    if (device == "cpu")
      out.notes.push_back(std::string("zero_optimization.") + key +
                          " to cpu changes nothing here: everything already lives in CPU memory");
    else if (device != "none")
      throw ConfigError(r.label() + ": zero_optimization." + key +
                        ".device must be none, cpu or nvme");
  }
  // HF fills these "auto" values from the model: bucket 0.9 hidden^2, threshold 10 hidden.
  const double bucket =
      r.number(z, "stage3_prefetch_bucket_size", "zero_optimization.stage3_prefetch_bucket_size")
          .value_or(0.9 * static_cast<double>(hidden) * static_cast<double>(hidden));
  a.prefetch_depth = bucket <= 0 ? 0
                                 : std::max(1, static_cast<int>(std::lround(
                                                   bucket / static_cast<double>(layer_elements))));
  if (auto t = r.number(z, "stage3_param_persistence_threshold",
                        "zero_optimization.stage3_param_persistence_threshold"))
    a.persistence_threshold = static_cast<std::int64_t>(*t);
  else if (z.contains("stage3_param_persistence_threshold"))
    a.persistence_threshold = 10 * hidden;
  if (auto m =
          r.number(z, "stage3_max_live_parameters", "zero_optimization.stage3_max_live_parameters"))
    a.max_live_elements = static_cast<std::int64_t>(*m);
  for (const auto& [key, value] : z.items())
    if (key != "stage" && key != "offload_param" && key != "offload_optimizer" &&
        key != "stage3_prefetch_bucket_size" && key != "stage3_param_persistence_threshold" &&
        key != "stage3_max_live_parameters")
      out.ignored_keys.push_back("zero_optimization." + key);
}

}  // namespace

void check_training_arguments(const TrainingArguments& a) {
  auto number = [](double v) {
    char text[40];
    std::snprintf(text, sizeof(text), "%.10g", v);
    return std::string(text);
  };
  auto real = [&](const char* flag, double v, double lo, double hi, bool open_above = false) {
    const bool ok = std::isfinite(v) && v >= lo && (open_above ? v < hi : v <= hi);
    if (ok) return;
    std::string want = "a finite number";
    if (!std::isfinite(hi))
      want += " >= " + number(lo);
    else
      want += (open_above ? " >= " + number(lo) + " and < " : " between " + number(lo) + " and ") +
              number(hi);
    throw ConfigError(std::string("--") + flag + " must be " + want + ", got " + number(v));
  };
  auto whole = [](const char* flag, std::int64_t v, std::int64_t lo) {
    if (v < lo)
      throw ConfigError(std::string("--") + flag + " must be a whole number >= " +
                        std::to_string(lo) + ", got " + std::to_string(v));
  };
  const double inf = std::numeric_limits<double>::infinity();
  whole("per_device_train_batch_size", a.per_device_train_batch_size, 1);
  whole("per_device_eval_batch_size", a.per_device_eval_batch_size, 1);
  whole("gradient_accumulation_steps", a.gradient_accumulation_steps, 1);
  real("learning_rate", a.learning_rate, 0, inf);
  real("weight_decay", a.weight_decay, 0, inf);
  real("adam_beta1", a.adam_beta1, 0, 1, true);
  real("adam_beta2", a.adam_beta2, 0, 1, true);
  real("adam_epsilon", a.adam_epsilon, 0, inf);
  real("max_grad_norm", a.max_grad_norm, 0, inf);
  real("warmup_ratio", a.warmup_ratio, 0, 1);
  whole("warmup_steps", a.warmup_steps, 0);
  real("num_train_epochs", a.num_train_epochs, 0, inf);
  whole("max_steps", a.max_steps, -1);
  real("lora_alpha", a.lora_alpha, 0, inf);
  real("lora_dropout", a.lora_dropout, 0, 1, true);
  whole("lora_rank", a.lora_rank, 1);
  whole("logging_steps", a.logging_steps, 1);
  whole("save_steps", a.save_steps, 1);
  whole("save_total_limit", a.save_total_limit, 0);
  whole("eval_steps", a.eval_steps, 0);
  real("eval_delay", a.eval_delay, 0, inf);
  whole("skip_nonfinite_steps", a.skip_nonfinite_steps, 0);
  if (a.max_steps <= 0 && a.num_train_epochs <= 0)
    throw UsageError("nothing to train: --num_train_epochs is " + number(a.num_train_epochs) +
                     " and --max_steps is " + std::to_string(a.max_steps) +
                     "; give a positive number of epochs or steps");
}

DeepSpeedResult apply_deepspeed_config(const json& ds, TrainingArguments& a, int world,
                                       std::int64_t hidden, std::int64_t layer_elements,
                                       const std::string& label) {
  if (!ds.is_object()) throw ConfigError(label + ": a DeepSpeed config must be a JSON object");
  const DsReader r(a, label);
  DeepSpeedResult out;
  resolve_batches(ds, a, world, r);
  r.merge(a.max_grad_norm, "max_grad_norm", r.number(ds, "gradient_clipping", "gradient_clipping"),
          "gradient_clipping");
  if (ds.contains("bf16")) {
    if (!ds["bf16"].is_object())
      throw ConfigError(label + ": 'bf16' must be an object like {\"enabled\": true}");
    if (auto enabled = r.boolean(ds["bf16"], "enabled", "bf16.enabled")) {
      if (a.is_set("bf16") && *enabled != a.bf16)
        throw ConfigError(label + ": 'bf16.enabled' is " + (*enabled ? "true" : "false") +
                          " but --bf16 is " + (a.bf16 ? "true" : "false") +
                          "; make them agree, or set it to \"auto\"");
      a.bf16 = *enabled;
    }
  }
  if (ds.contains("fp16") && ds["fp16"].is_object())
    if (auto enabled = r.boolean(ds["fp16"], "enabled", "fp16.enabled"); enabled && *enabled)
      throw UnsupportedError(
          label + ": fp16.enabled is true; zerolora trains in bf16 (bf16.enabled) or fp32");
  resolve_optimizer(ds, a, r);
  out.scheduler = resolve_scheduler(ds, r);
  resolve_zero(ds, a, hidden, layer_elements, r, out);
  if (auto steps = r.number(ds, "steps_per_print", "steps_per_print");
      steps && !a.is_set("logging_steps"))
    a.logging_steps = std::max<std::int64_t>(1, static_cast<std::int64_t>(*steps));
  static const std::set<std::string> used{"train_batch_size",
                                          "train_micro_batch_size_per_gpu",
                                          "gradient_accumulation_steps",
                                          "gradient_clipping",
                                          "bf16",
                                          "fp16",
                                          "optimizer",
                                          "scheduler",
                                          "zero_optimization",
                                          "steps_per_print"};
  for (const auto& [key, value] : ds.items())
    if (!used.count(key)) out.ignored_keys.push_back(key);
  return out;
}

LrSchedule make_lr_schedule(const TrainingArguments& a, const std::optional<DeepSpeedScheduler>& ds,
                            std::int64_t total_steps) {
  LrSchedule s;
  s.total_steps = total_steps;
  s.lr = a.learning_rate;
  s.warmup_steps = resolve_warmup_steps(a.warmup_steps, a.warmup_ratio, total_steps);
  if (!ds) {
    s.kind = parse_hf_scheduler(a.lr_scheduler_type);
    return s;
  }
  s.kind = ds->kind;
  s.log_warmup = ds->log_warmup;
  s.warmup_min_lr = ds->warmup_min_lr.value_or(0.0);
  if (ds->warmup_max_lr) s.lr = *ds->warmup_max_lr;
  if (ds->warmup_num_steps) s.warmup_steps = *ds->warmup_num_steps;
  if (ds->total_num_steps) s.total_steps = *ds->total_num_steps;
  s.warmup_min_ratio = ds->warmup_min_ratio.value_or(0.0);
  s.cos_min_ratio = ds->cos_min_ratio.value_or(1e-4);
  return s;
}

bool resolve_bf16_residual(const std::string& residual_dtype, bool bf16) {
  if (residual_dtype == "bf16" && !bf16)
    throw UsageError(
        "--residual_dtype bf16 needs --bf16: the fp32 mode keeps everything in fp32 (use "
        "--residual_dtype auto or fp32)");
  return residual_dtype == "bf16" || (residual_dtype == "auto" && bf16);
}

}  // namespace zerolora
