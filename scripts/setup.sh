#!/usr/bin/env bash
# From a fresh Debian 12 machine to a fine-tuned model: installs the packages zerolora needs,
# builds it, fine-tunes the tiny real Llama in demo/stories260K-hf on the project's own
# instruction set demo/instructions.json with the seed recipe's LoRA settings (about half a
# minute on 2 cores), and generates from the result. Everything it reads is in the repository;
# it does not install the Python reference stack (the tests do: scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh -DZEROLORA_BUILD_TESTS=OFF -DZEROLORA_BUILD_BENCH=OFF
model=demo/stories260K-hf
out="${ZEROLORA_DEMO_DIR:-out/demo}"
rm -rf "$out"
echo
echo "== zerolora train (the seed recipe's LoRA settings on $model; output in $out)"
./build/zerolora train \
  --model_name_or_path "$model" --train_file demo/instructions.json --output_dir "$out" \
  --deepspeed examples/ds_zero3_seed.json --bf16 true \
  --num_train_epochs 2 --max_seq_length 512 --per_device_train_batch_size 10 \
  --learning_rate 0.0018 --warmup_ratio 0.03 --lr_scheduler_type cosine --logging_steps 10 \
  --dataset_concatenation --lora_rank 4 --lora_alpha 16 --lora_dropout 0.05 \
  --lora_target_modules q_proj v_proj k_proj o_proj \
  --validation_split_percentage 5 --eval_strategy epoch --save_strategy no
echo
echo "== zerolora generate with the adapter"
./build/zerolora generate --model "$model" --adapter "$out" --template alpaca \
  --prompt "Write a short story about Lily, a happy cat who wants to find her red ball." \
  --max_new_tokens 64
