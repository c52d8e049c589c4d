// `zerolora train` reads Hugging Face command lines as HfArgumentParser does: prefixes,
// hyphens, --flag True/False, --no_<flag>; foreign flags ignored or refused with the reason;
// and the seed recipe's whole run_lora_clm.py command line parses into the settings it means.
#include <gtest/gtest.h>

#include "apps/hf_args.hpp"
#include "apps/train_flags.hpp"
#include "core/error.hpp"

namespace zerolora::cli {
namespace {

using Args = std::vector<std::string>;

class HfArgs : public ::testing::Test {
 protected:
  HfArgs() { add_train_flags(command_, flags_); }

  HfArguments rewrite(const Args& args) { return rewrite_hf_arguments(args, command_); }

  // Rewrites and parses, as `zerolora train` does.
  void parse(const Args& args) {
    HfArguments hf = rewrite(args);
    flags_.ignored_flags = hf.ignored;
    std::vector<std::string> reversed(hf.args.rbegin(), hf.args.rend());
    command_.parse(reversed);
  }

  template <class F>
  static std::string usage_error(F&& f) {
    try {
      f();
    } catch (const UsageError& e) {
      return e.what();
    }
    ADD_FAILURE() << "no UsageError";
    return {};
  }

  CLI::App command_{"train"};
  TrainFlags flags_;
};

TEST_F(HfArgs, PrefixesHyphensAndExactNames) {
  EXPECT_EQ(rewrite({"--max_seq_len", "2048"}).args, (Args{"--max_seq_length", "2048"}));
  EXPECT_EQ(rewrite({"--max-seq-length=7"}).args, (Args{"--max_seq_length=7"}));
  EXPECT_EQ(rewrite({"--per_device_train", "4"}).args,
            (Args{"--per_device_train_batch_size", "4"}));
  // An exact name wins over the longer names it prefixes (--bf16 / --bf16_full_eval).
  EXPECT_EQ(rewrite({"--bf16", "True"}).args, (Args{"--bf16", "True"}));
  EXPECT_EQ(rewrite({"--no_gradient_checkpointing"}).args,
            (Args{"--gradient_checkpointing=false"}));
  // Values and unknown flags pass through untouched (CLI11 reports unknown ones).
  EXPECT_EQ(rewrite({"--seed", "-3", "--bogus"}).args, (Args{"--seed", "-3", "--bogus"}));
  const std::string ambiguous = usage_error([&] { rewrite({"--lora", "4"}); });
  EXPECT_NE(ambiguous.find("ambiguous option: --lora could match --lora_alpha, --lora_dropout"),
            std::string::npos)
      << ambiguous;
}

TEST_F(HfArgs, ForeignFlagsAreTakenOutWithTheirValues) {
  const HfArguments hf =
      rewrite({"--use_habana", "--use_flash_attention", "True", "--lora_rank", "4", "--report_to",
               "none", "tensorboard", "--gaudi_config_name=Habana/llama", "--local_rank=3",
               "--fp16", "False", "--optim", "adamw_torch", "--bf16"});
  EXPECT_EQ(hf.args, (Args{"--lora_rank", "4", "--bf16"}));
  EXPECT_EQ(hf.ignored, (Args{"--use_habana", "--use_flash_attention True",
                              "--report_to none tensorboard", "--gaudi_config_name Habana/llama"}));
}

TEST_F(HfArgs, FlagsThatWouldChangeTheResultAreRefusedWithTheReason) {
  for (const auto& [args, reason] : std::vector<std::pair<Args, std::string>>{
           {{"--fp8", "True"}, "FP8 matmuls are not supported"},
           {{"--fp16"}, "fp16 mixed precision is not supported"},
           {{"--optim", "adafactor"}, "only AdamW"},
           {{"--label_smoothing_factor", "0.1"}, "label smoothing is not implemented"},
           {{"--dataset_name", "tatsu-lab/alpaca"}, "pass it with --train_file"},
           {{"--average_tokens_across_devices", "false"}, "whole global batch"},
           {{"--chat_prompt"}, "train with --data_format chat"},
           {{"--fp8", "maybe"}, "expected true or false"}}) {
    const std::string message = usage_error([&] { rewrite(args); });
    EXPECT_NE(message.find(args[0]), std::string::npos) << message;
    EXPECT_NE(message.find(reason), std::string::npos) << message;
  }
}

TEST_F(HfArgs, BooleansAsHfWritesThem) {
  for (const char* yes : {"yes", "True", "t", "Y", "1"}) EXPECT_EQ(hf_bool(yes), true) << yes;
  for (const char* no : {"no", "FALSE", "f", "n", "0"}) EXPECT_EQ(hf_bool(no), false) << no;
  EXPECT_EQ(hf_bool("On"), std::nullopt);
  parse({"--model_name_or_path", "m", "--train_file", "d", "--output_dir", "o", "--bf16", "f",
         "--dataset_concatenation", "--overwrite_output_dir", "True", "--train_on_inputs=no"});
  EXPECT_FALSE(flags_.args.bf16);
  EXPECT_TRUE(flags_.data.dataset_concatenation);
  EXPECT_TRUE(flags_.overwrite_output_dir);
  EXPECT_FALSE(flags_.data.train_on_inputs);
}

// optimum-habana's Llama-2-70B ZeRO-3 LoRA recipe (examples/language-modeling/README.md,
// v1.12), only the model path and the dataset swapped for local files.
TEST_F(HfArgs, TheSeedRecipesCommandLineParses) {
  parse({"--model_name_or_path",
         "Llama-2-70b-hf",
         "--deepspeed",
         "llama2_ds_zero3_config.json",
         "--train_file",
         "alpaca.json",
         "--bf16",
         "True",
         "--output_dir",
         "./lora_out",
         "--num_train_epochs",
         "2",
         "--max_seq_len",
         "2048",
         "--per_device_train_batch_size",
         "10",
         "--per_device_eval_batch_size",
         "10",
         "--gradient_checkpointing",
         "--evaluation_strategy",
         "epoch",
         "--eval_delay",
         "2",
         "--save_strategy",
         "no",
         "--learning_rate",
         "0.0018",
         "--warmup_ratio",
         "0.03",
         "--lr_scheduler_type",
         "cosine",
         "--logging_steps",
         "1",
         "--dataset_concatenation",
         "--attn_softmax_bf16",
         "True",
         "--do_train",
         "--do_eval",
         "--use_habana",
         "--use_lazy_mode",
         "--pipelining_fwd_bwd",
         "--throughput_warmup_steps",
         "3",
         "--lora_rank",
         "4",
         "--lora_target_modules",
         "q_proj",
         "v_proj",
         "k_proj",
         "o_proj",
         "--validation_split_percentage",
         "4",
         "--use_flash_attention",
         "True",
         "--flash_attention_causal_mask",
         "True"});
  const TrainingArguments& a = flags_.args;
  EXPECT_EQ(flags_.data.max_seq_length, 2048);
  EXPECT_TRUE(flags_.data.dataset_concatenation);
  EXPECT_DOUBLE_EQ(flags_.data.validation_split_percentage, 4);
  EXPECT_EQ(a.per_device_train_batch_size, 10);
  EXPECT_EQ(a.eval_strategy, "epoch");
  EXPECT_DOUBLE_EQ(a.eval_delay, 2);
  EXPECT_EQ(a.save_strategy, "no");
  EXPECT_DOUBLE_EQ(a.learning_rate, 0.0018);
  EXPECT_EQ(a.lr_scheduler_type, "cosine");
  EXPECT_EQ(a.logging_steps, 1);
  EXPECT_TRUE(a.attn_softmax_bf16);
  EXPECT_TRUE(a.gradient_checkpointing);
  EXPECT_TRUE(flags_.do_eval);
  EXPECT_EQ(a.throughput_warmup_steps, 3);
  EXPECT_EQ(a.lora_rank, 4);
  EXPECT_EQ(a.lora_target_modules,
            (std::vector<std::string>{"q_proj", "v_proj", "k_proj", "o_proj"}));
  EXPECT_EQ(flags_.deepspeed, "llama2_ds_zero3_config.json");
  EXPECT_EQ(flags_.ignored_flags,
            (Args{"--use_habana", "--use_lazy_mode", "--pipelining_fwd_bwd",
                  "--use_flash_attention True", "--flash_attention_causal_mask True"}));
}

}  // namespace
}  // namespace zerolora::cli
