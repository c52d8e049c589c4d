// Hugging Face command lines for `zerolora train`. A run_lora_clm.py / Trainer command pastes as
// is, because its arguments are rewritten here the way HfArgumentParser (argparse) reads them
// before CLI11 sees them:
//  - an unambiguous prefix names the flag (--max_seq_len is --max_seq_length; an exact name
//    wins over a longer one); hyphens and underscores are the same (--max-seq-length);
//    an ambiguous prefix is refused, naming the candidates;
//  - --no_<flag> turns a boolean flag off (HF offers it for booleans that default to true);
//  - flags of Transformers' Trainer, optimum-habana's run_lora_clm / GaudiTrainingArguments and
//    the DeepSpeed / torchrun / gaudi_spawn launchers that mean nothing here (hardware, graph
//    modes, logging, hub, launcher settings) are taken out with their values, to be listed in
//    one warning;
//  - flags that would change the result and cannot be honoured here (--fp16, --fp8 True,
//    another optimizer, label smoothing, data from the Hub, ...) are refused with the reason.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>
#include <vector>

namespace zerolora::cli {

struct HfArguments {
  std::vector<std::string> args;     // for CLI11: every flag spelled as zerolora names it
  std::vector<std::string> ignored;  // the flags taken out, as the user wrote them (for a warning)
};

// `args` are the command's arguments (after the subcommand name); `command` holds zerolora's
// own flags. Throws UsageError for an ambiguous prefix or a flag that cannot be honoured.
HfArguments rewrite_hf_arguments(const std::vector<std::string>& args, const CLI::App& command);

// HF's string_to_bool: yes/true/t/y/1 and no/false/f/n/0, any case; nothing else.
std::optional<bool> hf_bool(const std::string& text);

// A boolean flag as HF scripts write it: bare (--bf16), or with a value (--bf16 True,
// --bf16=false). The help text gets the default appended.
CLI::Option* add_hf_bool(CLI::App& cmd, const std::string& name, bool& target,
                         const std::string& help);

}  // namespace zerolora::cli
