#!/usr/bin/env bash
# From a fresh Debian 12 machine to a fine-tuned model: installs the packages, builds, then
# fine-tunes the tiny real Llama in ../shared/data/stories260K-hf on the Alpaca demo data with
# the seed recipe's LoRA settings (about half a minute on 2 cores) and generates from the result.
# Override the data location with ZEROLORA_SHARED_DATA.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# The reference stack (torch, transformers, peft) for the interop tests; zerolora never needs it.
python3 -m pip install -q -r tools/requirements.txt
./scripts/build.sh
data="${ZEROLORA_SHARED_DATA:-../shared/data}"
model="$data/stories260K-hf"
if [ ! -f "$model/config.json" ]; then
  echo "setup: built, but the demo model is not at $model (set ZEROLORA_SHARED_DATA)" >&2
  exit 1
fi
out="${ZEROLORA_DEMO_DIR:-out/demo}"
rm -rf "$out"
echo
echo "== zerolora train (the seed recipe's LoRA settings on stories260K-hf; output in $out)"
./build/zerolora train \
  --model_name_or_path "$model" --train_file "$data/alpaca_en_demo.json" --output_dir "$out" \
  --deepspeed examples/ds_zero3_seed.json --bf16 true \
  --num_train_epochs 2 --max_seq_length 512 --per_device_train_batch_size 10 \
  --learning_rate 0.0018 --warmup_ratio 0.03 --lr_scheduler_type cosine --logging_steps 10 \
  --dataset_concatenation --lora_rank 4 --lora_alpha 16 --lora_dropout 0.05 \
  --lora_target_modules q_proj v_proj k_proj o_proj \
  --validation_split_percentage 5 --eval_strategy epoch --save_strategy no
echo
echo "== zerolora generate with the adapter"
./build/zerolora generate --model "$model" --adapter "$out" --template alpaca \
  --prompt "Give three tips for staying healthy." --max_new_tokens 48
