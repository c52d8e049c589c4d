// `zerolora generate`: continue a prompt with a base model and optionally a LoRA adapter,
// streamed to stdout; KV cache; greedy or sampled.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "apps/cli.hpp"
#include "apps/commands.hpp"
#include "apps/data_flags.hpp"
#include "apps/flag_checks.hpp"
#include "apps/model_files.hpp"
#include "core/error.hpp"
#include "core/precision.hpp"
#include "data/chat.hpp"
#include "data/dataset.hpp"
#include "data/prompt.hpp"
#include "data/tokenizer.hpp"
#include "io/checkpoint.hpp"
#include "lora/peft_adapter.hpp"
#include "model/backend.hpp"
#include "model/generate.hpp"
#include "zero3/whole_model.hpp"

namespace zerolora::cli {
namespace {

struct GenerateOptions {
  std::string model, tokenizer, adapter, prompt, input, prompt_template = "raw";
  std::string chat_template, chat_date, system;
  int max_new_tokens = 64;
  SamplingOptions sampling;
  std::string dtype = "bf16";
  int threads = 0;
  std::string device = "cpu";
};

template <class P>
GeneratedText generate_with(const GenerateOptions& o, const TextSink& on_text) {
  const std::filesystem::path dir = o.model;
  Checkpoint checkpoint(dir);
  const LlamaConfig& config = checkpoint.config();
  const Tokenizer tokenizer = open_model_tokenizer(dir, config, o.tokenizer);
  const InferenceAdapter adapter = load_inference_adapter(o.adapter, config);
  Runtime rt(o.threads, make_device(o.device));
  auto weights = load_whole_model<typename P::Weight>(rt, checkpoint);
  LlamaModel<P> model(rt, *weights, adapter.layout.get());

  // The prompt as training saw it: through the template (alpaca: the instruction, and --input;
  // chat: one user turn, after --system, through the model's chat template, ready for the
  // assistant's answer).
  std::vector<std::int32_t> ids;
  std::size_t shown_from = 0;  // what is printed: the text after the BOS, or only the answer
  std::vector<std::int64_t> stop = config.eos_token_ids;
  if (o.prompt_template == "chat") {
    ChatTemplate chat = ChatTemplate::for_tokenizer(tokenizer, o.chat_template);
    if (!o.chat_date.empty()) chat.set_date(o.chat_date);
    std::vector<ChatMessage> messages;
    if (!o.system.empty()) messages.push_back({"system", o.system});
    messages.push_back({"user", o.prompt});
    const auto token = [&](std::int32_t id) { return id >= 0 ? tokenizer.token_text(id) : ""; };
    ids = encode_chat_text(
        tokenizer,
        chat.render(messages, token(tokenizer.bos_id()), token(tokenizer.eos_id()), true).text);
    shown_from = ids.size();
    // The turn ends at the template's end-of-turn token, which may not be config.json's EOS.
    if (tokenizer.eos_id() >= 0) stop.push_back(tokenizer.eos_id());
    for (const char* end_of_turn : {"<|eot_id|>", "<|im_end|>"})
      if (const auto id = tokenizer.token_id(end_of_turn)) stop.push_back(*id);
  } else {
    const Prompt prompt =
        PromptTemplate::named(o.prompt_template).apply(Record{o.prompt, o.input, "", {}});
    const std::string text = prompt.source + prompt.target;
    ids = encode_prompt(tokenizer, config, text);
    shown_from = tokenizer.adds_bos() ? 1 : 0;  // encode_prompt's BOS
  }
  GeneratedText result;
  result.prompt_tokens = ids.size();
  // Special tokens (EOS, an end of turn) are left out of the text.
  result.prompt = tokenizer.decode(std::span(ids).subspan(shown_from), true);
  on_text(result.prompt, true);
  std::string shown = result.prompt;
  auto stream = [&](const std::vector<std::int32_t>& all) {
    // Decode everything (sentencepiece joins pieces with context) and pass on the new suffix.
    std::string decoded = tokenizer.decode(std::span(all).subspan(shown_from), true);
    if (decoded.size() > shown.size() && decoded.compare(0, shown.size(), shown) == 0) {
      on_text(std::string_view(decoded).substr(shown.size()), false);
      shown = std::move(decoded);
    }
  };
  const auto start = std::chrono::steady_clock::now();
  const auto out = generate(model, ids, o.max_new_tokens, stop, adapter.params, o.sampling, stream);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.new_tokens = out.size() - result.prompt_tokens;
  // The completion as it reads after the prompt (decoded with its context, as streamed).
  const std::string all = tokenizer.decode(std::span(out).subspan(shown_from), true);
  result.completion = all.compare(0, result.prompt.size(), result.prompt) == 0
                          ? all.substr(result.prompt.size())
                          : tokenizer.decode(std::span(out).subspan(result.prompt_tokens), true);
  return result;
}

GeneratedText generate_with(const GenerateOptions& o, const TextSink& on_text) {
  return o.dtype == "fp32" ? generate_with<Fp32Policy>(o, on_text)
                           : generate_with<Bf16Policy>(o, on_text);
}

int run_generate(const GenerateOptions& o) {
  const GeneratedText text = generate_with(o, [](std::string_view piece, bool) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  });
  std::printf("\n");
  std::fflush(stdout);
  std::fprintf(stderr, "[%zu prompt tokens, %zu generated in %.2f s]\n", text.prompt_tokens,
               text.new_tokens, text.seconds);
  return 0;
}

void add_generate_flags(CLI::App* cmd, GenerateOptions* o) {
  cmd->add_option(
         "--model_name_or_path,--model", o->model,
         "HF model directory: config.json, *.safetensors, tokenizer.json or tokenizer.model")
      ->required();
  cmd->add_option("--tokenizer", o->tokenizer,
                  "Tokenizer file or directory (default: the model directory's)");
  cmd->add_option("--adapter", o->adapter,
                  "A PEFT LoRA adapter directory (from zerolora train, or PEFT)");
  cmd->add_option(
         "--prompt", o->prompt,
         "Text to continue (after BOS where the tokenizer adds one); with --template alpaca, the "
         "instruction")
      ->required();
  cmd->add_option("--input", o->input,
                  "With --template alpaca: the optional input (context) field");
  cmd->add_option(
         "--template", o->prompt_template,
         "raw: the prompt as is; alpaca: wrapped as training wrapped it; chat: one user turn "
         "through the model's chat template (only the answer is printed); or a template file")
      ->capture_default_str();
  add_chat_template_flags(*cmd, o->chat_template, o->chat_date, "With --template chat");
  cmd->add_option("--system", o->system, "With --template chat: a system message first");
  cmd->add_option("--max_new_tokens", o->max_new_tokens,
                  "Tokens to generate at most (stops at EOS)")
      ->capture_default_str()
      ->check(whole_in(1, 1 << 20));
  cmd->add_option("--temperature", o->sampling.temperature,
                  "0: greedy; above 0: sample with this temperature")
      ->capture_default_str()
      ->check(finite_in(0.0, 100.0));
  cmd->add_option("--top_k", o->sampling.top_k, "Sample among the K most likely tokens (0: all)")
      ->capture_default_str()
      ->check(whole_in(0));
  cmd->add_option("--top_p", o->sampling.top_p,
                  "Sample among the most likely tokens whose probability reaches P")
      ->capture_default_str()
      ->check(finite_in(0.0, 1.0));
  cmd->add_option("--seed", o->sampling.seed, "Sampling seed: the same seed gives the same text")
      ->capture_default_str()
      ->check(whole_in(0));
  cmd->add_option("--dtype", o->dtype,
                  "bf16: bf16 weights and matmuls (fp32 accumulation); fp32: everything fp32")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "fp32"}));
  cmd->add_option("--device", o->device,
                  "Where the model runs: cpu, or cuda / cuda:N (a GPU; builds with ZEROLORA_CUDA)")
      ->capture_default_str();
  cmd->add_option("--threads", o->threads, "Compute threads (0: all cores)")
      ->capture_default_str()
      ->check(whole_in(0, 4096));
}

}  // namespace

Command add_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate",
                                 "Continue a prompt with a model and optionally a LoRA adapter");
  auto o = std::make_shared<GenerateOptions>();
  add_generate_flags(cmd, o.get());
  return [o] { return run_generate(*o); };
}

GeneratedText generate_text(const std::vector<std::string>& args, const TextSink& on_text) {
  CLI::App cmd("generate");
  GenerateOptions o;
  add_generate_flags(&cmd, &o);
  parse_function_flags(cmd, args);
  return generate_with(o, on_text);
}

}  // namespace zerolora::cli
