// `zerolora generate`: greedy continuation of a prompt with a base model, streamed to stdout.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "apps/commands.hpp"
#include "core/error.hpp"
#include "core/precision.hpp"
#include "data/tokenizer.hpp"
#include "io/checkpoint.hpp"
#include "model/generate.hpp"
#include "model/llama_weights.hpp"

namespace zerolora::cli {
namespace {

struct GenerateOptions {
  std::string model;
  std::string prompt;
  int max_new_tokens = 64;
  std::string dtype = "bf16";
  int threads = 0;
};

template <class P>
int run_generate(const GenerateOptions& o) {
  const std::filesystem::path dir = o.model;
  Checkpoint checkpoint(dir);
  const Tokenizer tokenizer(dir / "tokenizer.model");
  if (tokenizer.vocab_size() > checkpoint.config().vocab_size)
    throw ShapeError((dir / "tokenizer.model").string() + " has " +
                     std::to_string(tokenizer.vocab_size()) +
                     " pieces but config.json says vocab_size " +
                     std::to_string(checkpoint.config().vocab_size));
  Runtime rt(o.threads);
  auto weights = load_llama_weights<typename P::Weight>(rt, checkpoint);
  LlamaModel<P> model(rt, weights, nullptr);
  std::vector<std::int32_t> ids{static_cast<std::int32_t>(checkpoint.config().bos_token_id)};
  const auto prompt = tokenizer.encode(o.prompt);
  ids.insert(ids.end(), prompt.begin(), prompt.end());
  const std::size_t prompt_len = ids.size();
  std::string printed = o.prompt;
  std::fputs(printed.c_str(), stdout);
  std::fflush(stdout);
  auto stream = [&](const std::vector<std::int32_t>& all) {
    // Decode everything (sentencepiece joins pieces with context) and print the new suffix.
    std::string text = tokenizer.decode(std::span(all).subspan(1));
    if (text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0) {
      std::fputs(text.c_str() + printed.size(), stdout);
      std::fflush(stdout);
      printed = std::move(text);
    }
  };
  const auto out =
      greedy_generate(model, ids, o.max_new_tokens, checkpoint.config().eos_token_ids, {}, stream);
  std::printf("\n");
  std::fprintf(stderr, "[%zu prompt tokens, %zu generated]\n", prompt_len, out.size() - prompt_len);
  return 0;
}

}  // namespace

Command add_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand("generate", "Continue a prompt with a model (greedy decoding)");
  auto o = std::make_shared<GenerateOptions>();
  cmd->add_option("--model_name_or_path,--model", o->model,
                  "HF model directory: config.json, *.safetensors, tokenizer.model")
      ->required();
  cmd->add_option("--prompt", o->prompt, "Text to continue (BOS is prepended)")->required();
  cmd->add_option("--max_new_tokens", o->max_new_tokens,
                  "Tokens to generate at most (stops at EOS)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  cmd->add_option(
         "--dtype", o->dtype,
         "bf16: weights in bf16, bf16 matmuls with fp32 accumulation; fp32: everything fp32")
      ->capture_default_str()
      ->check(CLI::IsMember({"bf16", "fp32"}));
  cmd->add_option("--threads", o->threads, "Compute threads (0: all cores)")->capture_default_str();
  return [o] {
    return o->dtype == "fp32" ? run_generate<Fp32Policy>(*o) : run_generate<Bf16Policy>(*o);
  };
}

}  // namespace zerolora::cli
