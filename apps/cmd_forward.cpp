// `zerolora forward`: the logits (and loss) of a model, optionally with an adapter, on given
// tokens or a prompt, written to a .safetensors file: for scoring, and for comparing with
// other implementations (the interop tests compare these with Transformers + PEFT).
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>

#include "apps/commands.hpp"
#include "apps/flag_checks.hpp"
#include "apps/model_files.hpp"
#include "core/error.hpp"
#include "core/precision.hpp"
#include "data/dataset.hpp"
#include "data/tokenizer.hpp"
#include "io/safetensors.hpp"
#include "lora/peft_adapter.hpp"
#include "model/backend.hpp"
#include "model/llama_model.hpp"
#include "zero3/whole_model.hpp"

namespace zerolora::cli {
namespace {

struct ForwardOptions {
  std::string model, tokenizer, adapter, input_ids, prompt, output, dtype = "fp32";
  int threads = 0;
  std::string device = "cpu";
};

template <class P>
int run_forward(const ForwardOptions& o) {
  const Checkpoint checkpoint(o.model);
  const LlamaConfig& config = checkpoint.config();
  std::vector<std::int32_t> ids;
  if (!o.input_ids.empty()) {
    std::stringstream in(o.input_ids);
    for (std::string item; std::getline(in, item, ',');) {
      std::size_t used = 0;
      long long id = -1;
      try {
        id = std::stoll(item, &used);
      } catch (...) {
        used = 0;
      }
      if (used == 0 || item.find_first_not_of(" \t", used) != std::string::npos)
        throw UsageError("--input_ids must be comma-separated integers, got '" + item + "'");
      if (id < 0 || id >= config.vocab_size)
        throw UsageError("--input_ids: token id " + item + " (item " +
                         std::to_string(ids.size() + 1) + ") is outside the vocabulary of " +
                         o.model + " (0 to " + std::to_string(config.vocab_size - 1) + ")");
      ids.push_back(static_cast<std::int32_t>(id));
    }
  } else {
    const Tokenizer tokenizer = open_model_tokenizer(o.model, config, o.tokenizer);
    ids = encode_prompt(tokenizer, config, o.prompt);
  }
  if (ids.empty()) throw UsageError("--input_ids holds no token id");
  const InferenceAdapter adapter = load_inference_adapter(o.adapter, config);
  const std::vector<float>& lora = adapter.params;
  Runtime rt(o.threads, make_device(o.device));
  auto weights = load_whole_model<typename P::Weight>(rt, checkpoint);
  LlamaModel<P> model(rt, *weights, adapter.layout.get());
  Batch batch;
  batch.add_sequence(ids, ids, 0);
  std::vector<float> logits(ids.size() * static_cast<std::size_t>(config.vocab_size));
  model.forward_logits(batch, lora, logits.data());
  // One token predicts nothing: there is no loss to report, rather than a loss of 0.
  const bool has_loss = batch.label_count() > 0;
  const double loss =
      has_loss ? model.loss(batch, lora) / static_cast<double>(batch.label_count()) : 0.0;
  SafetensorsWriter writer;
  writer.add<float>("logits", DType::kF32,
                    {static_cast<std::int64_t>(ids.size()), config.vocab_size}, logits);
  std::vector<std::int64_t> ids64(ids.begin(), ids.end());
  writer.add<std::int64_t>("input_ids", DType::kI64, {static_cast<std::int64_t>(ids.size())},
                           ids64);
  if (has_loss) writer.set_metadata("loss", std::to_string(loss));
  writer.write(o.output);
  const std::string loss_text = has_loss
                                    ? "loss " + std::to_string(loss) + " (next-token cross-entropy)"
                                    : std::string("no loss (one token: nothing to predict)");
  std::printf("%zu tokens, %s; logits [%zu, %lld] written to %s\n", ids.size(), loss_text.c_str(),
              ids.size(), static_cast<long long>(config.vocab_size), o.output.c_str());
  // On a GPU: which attention ran (cuDNN's, or the reference kernel and why).
  for (const std::string& note : model.take_kernel_notes()) std::printf("%s\n", note.c_str());
  return 0;
}

}  // namespace

Command add_forward(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "forward", "Write the logits of a model (+ adapter) on tokens or a prompt to .safetensors");
  auto o = std::make_shared<ForwardOptions>();
  cmd->add_option("--model_name_or_path,--model", o->model, "Base model directory")->required();
  cmd->add_option("--adapter", o->adapter, "PEFT LoRA adapter directory");
  auto* ids =
      cmd->add_option("--input_ids", o->input_ids, "Token ids, comma-separated (no BOS is added)");
  cmd->add_option("--prompt", o->prompt,
                  "Text, tokenized with the model's tokenizer (after BOS where it adds one)")
      ->excludes(ids);
  cmd->add_option("--tokenizer", o->tokenizer,
                  "Tokenizer file or directory for --prompt (default: the model directory's)");
  cmd->add_option("--output", o->output, "Output .safetensors: logits [T, V] (F32), input_ids [T]")
      ->required();
  cmd->add_option("--dtype", o->dtype, "fp32 (default: for comparisons) or bf16")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "fp32"}));
  cmd->add_option("--device", o->device,
                  "Where the model runs: cpu, or cuda / cuda:N (a GPU; builds with ZEROLORA_CUDA)")
      ->capture_default_str();
  cmd->add_option("--threads", o->threads, "Threads (0: all cores)")
      ->capture_default_str()
      ->check(whole_in(0, 4096));
  return [o, cmd] {
    if (cmd->count("--input_ids") == 0 && cmd->count("--prompt") == 0)
      throw UsageError("give the tokens: --input_ids 1,2,3 or --prompt TEXT");
    return o->dtype == "fp32" ? run_forward<Fp32Policy>(*o) : run_forward<Bf16Policy>(*o);
  };
}

}  // namespace zerolora::cli
