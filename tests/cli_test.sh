#!/usr/bin/env bash
# End-to-end checks of the `zerolora` executable: outputs, exit codes and error messages.
# Usage: cli_test.sh ZEROLORA_BINARY DEMO_DIR (the repository's demo/: model and instructions)
set -uo pipefail
bin="$1"
model="$2/stories260K-hf"
data="$2/instructions.json"
source "$(dirname "$0")/check.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

[ -f "$model/config.json" ] && [ -f "$data" ] || { echo "cli_test: no demo model or data in $2" >&2; exit 1; }

out="$("$bin" generate --model "$model" --prompt "Once upon a time" --max_new_tokens 20 --dtype fp32 2>/dev/null)"
[[ "$out" == "Once upon a time, there was a little girl named Lily. She loved to play out"* ]]
check "generate continues the prompt as Transformers does" $?

"$bin" inspect "$model" > "$work/inspect.txt"
grep -q "5 layers, hidden 64" "$work/inspect.txt" && grep -q "model.layers.4.mlp.down_proj.weight" "$work/inspect.txt"
check "inspect lists config and tensors" $?

"$bin" data-preview --model "$model" --train_file "$data" --max_seq_length 300 \
  --num_examples 3 --output "$work/preview.jsonl" 2> "$work/preview.err"
[ "$(wc -l < "$work/preview.jsonl")" -eq 3 ] && grep -q '"labels":\[-100' "$work/preview.jsonl" \
  && grep -q "1000 records read" "$work/preview.err"
check "data-preview writes JSON Lines with masked labels" $?

"$bin" generate --model "$work/nowhere" --prompt x > /dev/null 2> "$work/err.txt"
code=$?
[ "$code" -eq 1 ] && grep -q "nowhere: not a directory" "$work/err.txt"
check "missing model: exit 1 and the path named" $?

"$bin" generate --model "$model" > /dev/null 2>&1
[ $? -eq 2 ]
check "missing required flag: exit 2" $?

"$bin" generate --model "$model" --prompt x --dtype fp16 > /dev/null 2>&1
[ $? -eq 2 ]
check "invalid flag value: exit 2" $?

printf '[{"instruction": "x"}]' > "$work/bad.json"
"$bin" data-preview --model "$model" --train_file "$work/bad.json" > /dev/null 2> "$work/err.txt"
code=$?
[ "$code" -eq 1 ] && grep -q "bad.json: record 0 has no field 'output'" "$work/err.txt"
check "bad record: exit 1 naming file, record and field" $?

"$bin" --help | grep -q "data-preview"
check "--help lists the commands" $?

# A short fine-tune, then the commands that use its adapter.
"$bin" train --model_name_or_path "$model" --train_file "$data" --output_dir "$work/run" \
  --max_steps 4 --per_device_train_batch_size 2 --max_seq_length 200 --lora_rank 4 --save_strategy no \
  --logging_steps 2 > "$work/train.log" 2>&1
[ $? -eq 0 ] && [ -f "$work/run/adapter_model.safetensors" ] && [ -f "$work/run/loss_curve.svg" ] \
  && [ "$(grep -c '"loss"' "$work/run/metrics.jsonl")" -eq 2 ] && grep -q '"train_runtime"' "$work/run/train_results.json"
check "train writes adapter, metrics, loss curve and summary" $?
grep -q "recompute: auto, 32.0 MiB for 400-token micro-batches: 5 none" "$work/train.log"
check "train logs its recompute plan (auto, the default)" $?

"$bin" inspect "$work/run" | grep -q "LoRA parameters: 4480"
check "inspect shows an adapter" $?

# Blocks of 128 concatenated tokens: with this tokenizer's 512 pieces many hold prompt only.
"$bin" train --model_name_or_path "$model" --train_file "$data" --output_dir "$work/prompt_only" \
  --max_steps 6 --per_device_train_batch_size 1 --max_seq_length 128 --packing concat \
  --save_strategy no --logging_steps 1 > "$work/prompt_only.log" 2>&1
[ $? -eq 0 ] && grep -q "no target token in the batch (prompt tokens only)" "$work/prompt_only.log" \
  && grep -q "tok/s" "$work/prompt_only.log" && ! grep -qi "nan" "$work/prompt_only.log"
check "train: a step with no target token says so, not 'nan' (and the others give their rate)" $?

a="$("$bin" generate --model "$model" --adapter "$work/run" --prompt "Once" --max_new_tokens 12 --temperature 0.9 --seed 5 2>/dev/null)"
b="$("$bin" generate --model "$model" --adapter "$work/run" --prompt "Once" --max_new_tokens 12 --temperature 0.9 --seed 5 2>/dev/null)"
c="$("$bin" generate --model "$model" --adapter "$work/run" --prompt "Once" --max_new_tokens 12 --temperature 0.9 --seed 6 2>/dev/null)"
[ -n "$a" ] && [ "$a" = "$b" ] && [ "$a" != "$c" ]
check "sampling: the same seed gives the same text, another seed another" $?

"$bin" estimate-memory --preset llama2-70b --world_size 8 --per_device_train_batch_size 10 --max_seq_length 2048 \
  --lora_rank 4 | grep -q "^fits a 96 GB device"
check "estimate-memory: the seed recipe (70B, 8 ranks, batch 10 x 2048) fits 96 GB devices" $?

# The seed recipe's run_lora_clm.py command line (optimum-habana v1.12), as pasted: only the
# model, the dataset (a local file) and the output directory swapped, and two steps appended.
seed_flags=(--deepspeed "$(dirname "$0")/../examples/ds_zero3_seed.json" --bf16 True --num_train_epochs 2
  --max_seq_len 2048 --per_device_train_batch_size 10 --per_device_eval_batch_size 10 --gradient_checkpointing
  --evaluation_strategy epoch --eval_delay 2 --save_strategy no --learning_rate 0.0018 --warmup_ratio 0.03
  --lr_scheduler_type "cosine" --logging_steps 1 --dataset_concatenation --attn_softmax_bf16 True --do_train
  --do_eval --use_habana --use_lazy_mode --pipelining_fwd_bwd --throughput_warmup_steps 3 --lora_rank 4
  --lora_target_modules "q_proj" "v_proj" "k_proj" "o_proj" --validation_split_percentage 4
  --use_flash_attention True --flash_attention_causal_mask True)
"$bin" train --model_name_or_path "$model" --train_file "$data" --output_dir "$work/seed" "${seed_flags[@]}" \
  --max_steps 2 > "$work/seed.log" 2>&1
[ $? -eq 0 ] && grep -q "ignored: --use_habana, --use_lazy_mode, --pipelining_fwd_bwd, --use_flash_attention True, --flash_attention_causal_mask True" "$work/seed.log" \
  && grep -q "eval at step 2" "$work/seed.log" && [ -f "$work/seed/adapter_model.safetensors" ]
check "the seed recipe's command line runs, its hardware flags listed in one warning" $?
"$bin" train --model_name_or_path "$model" --train_file "$data" --output_dir "$work/fp8" \
  "${seed_flags[@]}" --fp8 True > /dev/null 2> "$work/err.txt"
[ $? -eq 2 ] && grep -q -- "--fp8 True: FP8 matmuls are not supported" "$work/err.txt" && [ ! -e "$work/fp8" ]
check "a flag that would change the result (--fp8 True): refused with the reason" $?
"$bin" train --model_name_or_path "$model" --dataset_name tatsu-lab/alpaca --output_dir "$work/hub" > /dev/null 2> "$work/err.txt"
[ $? -eq 2 ] && grep -q "reads data from local files.*--train_file" "$work/err.txt"
check "--dataset_name: data comes from local files, with the formats named" $?

# Bad input: one clear message each.
"$bin" generate --model "$model" --adapter "$work/run" --prompt x > /dev/null 2>&1
[ $? -eq 0 ]
check "(control) the adapter loads on its own base" $?
"$bin" train --model_name_or_path "$model" --train_file "$data" --output_dir "$work/x" \
  --dataset_concatenation --packing boundaries > /dev/null 2> "$work/err.txt"
[ $? -eq 2 ] && grep -q "conflicts" "$work/err.txt"
check "conflicting flags: exit 2" $?
"$bin" train --model_name_or_path "$model" --train_file "$data" --output_dir "$work/x2" \
  --bf16 false --residual_dtype bf16 > /dev/null 2> "$work/err.txt"
[ $? -eq 2 ] && grep -q -- "--residual_dtype bf16 needs --bf16" "$work/err.txt" && [ ! -e "$work/x2" ]
check "a bf16 residual in fp32 mode: exit 2, nothing written" $?
"$bin" train --model_name_or_path "$model" --train_file "$data" --output_dir "$work/x3" \
  --recompute_granularity partial > /dev/null 2> "$work/err.txt"
[ $? -eq 2 ] && grep -q -- "--recompute_granularity" "$work/err.txt" && [ ! -e "$work/x3" ]
check "an unknown recompute granularity: exit 2, the flag named" $?
"$bin" train --model_name_or_path "$model" --train_file "$data" --output_dir "$work/x4" \
  --recompute_budget_mib nan > /dev/null 2> "$work/err.txt"
[ $? -eq 2 ] && grep -q -- "--recompute_budget_mib" "$work/err.txt" && [ ! -e "$work/x4" ]
check "a NaN recompute budget: exit 2, the flag named" $?
"$bin" train --model_name_or_path "$model" --train_file "$work/bad.json" --output_dir "$work/y" > /dev/null 2> "$work/err.txt"
[ $? -eq 1 ] && grep -q "bad.json: record 0" "$work/err.txt" && [ ! -e "$work/y/adapter_model.safetensors" ]
check "train on a dataset that does not parse: exit 1, nothing written" $?
cp -r "$work/run" "$work/shallow_adapter"
python3 - "$work/shallow_adapter/adapter_model.safetensors" <<'PY'
# Keep the first 32 input columns of every lora_A (fp32 [r, in]): the adapter of a narrower base.
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
out, body = {}, b""
for name, info in sorted(((k, v) for k, v in header.items() if k != "__metadata__"), key=lambda kv: kv[1]["data_offsets"][0]):
    begin, end = info["data_offsets"]
    chunk = data[begin:end]
    if name.endswith("lora_A.weight"):
        rows, cols = info["shape"]
        chunk = b"".join(chunk[r * cols * 4:(r * cols + 32) * 4] for r in range(rows))
        info = dict(info, shape=[rows, 32])
    out[name] = dict(info, data_offsets=[len(body), len(body) + len(chunk)])
    body += chunk
out["__metadata__"] = {"format": "pt"}
text = json.dumps(out).encode()
text += b" " * (-len(text) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(text)) + text + body)
PY
"$bin" generate --model "$model" --adapter "$work/shallow_adapter" --prompt x > /dev/null 2> "$work/err.txt"
[ $? -eq 1 ] && grep -q "another base model" "$work/err.txt"
check "an adapter for another base: exit 1 naming the tensor" $?
# Chat data on the sentencepiece model: conversations (OpenAI messages, ShareGPT) through the
# Llama 2 chat template, the loss on the answers only.
cat > "$work/chat.jsonl" <<'JSONL'
{"messages": [{"role": "system", "content": "Tell short stories."}, {"role": "user", "content": "A story about a cat."}, {"role": "assistant", "content": "Once upon a time, there was a cat named Tom. He liked to play."}]}
{"conversations": [{"from": "human", "value": "Who is Lily?"}, {"from": "gpt", "value": "Lily is a little girl."}, {"from": "human", "value": "What does she like?"}, {"from": "gpt", "value": "She likes to play in the park."}]}
JSONL
"$bin" data-preview --model "$model" --train_file "$work/chat.jsonl" --chat_template llama2-chat \
  --output "$work/chat_preview.jsonl" 2> "$work/chat_preview.err"
[ $? -eq 0 ] && [ "$(wc -l < "$work/chat_preview.jsonl")" -eq 2 ] && grep -q "chat template llama2-chat" "$work/chat_preview.err" \
  && grep -q '"marked_text":"\[INST\] <<SYS>>' "$work/chat_preview.jsonl" \
  && grep -q '⟦ Lily is a little girl.⟧ \[INST\]' "$work/chat_preview.jsonl" \
  && grep -q '"input_ids":\[1,' "$work/chat_preview.jsonl"
check "data-preview renders conversations with the chat template and marks what trains" $?
"$bin" data-preview --model "$model" --train_file "$work/chat.jsonl" > /dev/null 2> "$work/err.txt"
[ $? -eq 1 ] && grep -q "no chat template" "$work/err.txt" && grep -q -- "--chat_template" "$work/err.txt"
check "chat data for a model without a chat template: exit 1 saying what to pass" $?
"$bin" train --model_name_or_path "$model" --train_file "$work/chat.jsonl" --chat_template llama2-chat \
  --output_dir "$work/chat_run" --max_steps 2 --per_device_train_batch_size 2 --save_strategy no > "$work/chat.log" 2>&1
[ $? -eq 0 ] && grep -q "loss on assistant turns" "$work/chat.log" && [ -f "$work/chat_run/adapter_model.safetensors" ]
check "train on conversations" $?
# Llama 3.2's template dates its system header (today's date, as apply_chat_template renders it,
# unless --chat_date); a checkpoint resumes only with the date it was rendered with.
"$bin" data-preview --model "$model" --train_file "$work/chat.jsonl" --chat_template llama3.2 \
  --chat_date 2025-05-09 --output "$work/chat32.jsonl" 2> "$work/chat32.err"
[ $? -eq 0 ] && grep -q "chat template llama3.2 dated 2025-05-09" "$work/chat32.err" \
  && [ "$(grep -c 'Cutting Knowledge Date: December 2023\\nToday Date: 09 May 2025\\n\\nTell short stories.' "$work/chat32.jsonl")" -eq 1 ]
check "data-preview --chat_template llama3.2 --chat_date: the header dated as given" $?
"$bin" data-preview --model "$model" --train_file "$work/chat.jsonl" --chat_template llama3.2 \
  --chat_date 2025-02-30 > /dev/null 2> "$work/err.txt"
[ $? -eq 2 ] && grep -q -- "--chat_date" "$work/err.txt" && grep -q "YYYY-MM-DD" "$work/err.txt"
check "--chat_date that is not a day: exit 2 naming the flag" $?
"$bin" train --model_name_or_path "$model" --train_file "$work/chat.jsonl" --chat_template llama3.2 \
  --chat_date 2025-05-09 --output_dir "$work/chat32_run" --max_steps 2 --save_steps 1 \
  --per_device_train_batch_size 2 > "$work/chat32.log" 2>&1
[ $? -eq 0 ] && grep -q "llama3.2 chat template dated 2025-05-09 (--chat_date)" "$work/chat32.log"
check "train on conversations through a dated template says the date" $?
"$bin" train --model_name_or_path "$model" --train_file "$work/chat.jsonl" --chat_template llama3.2 \
  --chat_date 2025-05-10 --output_dir "$work/chat32_run" --max_steps 2 --per_device_train_batch_size 2 \
  --resume_from_checkpoint "$work/chat32_run/checkpoint-1" > /dev/null 2> "$work/err.txt"
[ $? -eq 1 ] && grep -q "chat_date: checkpoint 2025-05-09, now 2025-05-10" "$work/err.txt" \
  && grep -q "pass --chat_date 2025-05-09" "$work/err.txt"
check "resume with another chat date: refused, naming it and the date to pass" $?
head -n 1 "$work/chat.jsonl" > "$work/chat_system.jsonl"  # a system message: v7 writes no date
"$bin" data-preview --model "$model" --train_file "$work/chat.jsonl" --chat_template mistral-v7 \
  --chat_date 2025-05-09 --output "$work/chat_v7.jsonl" 2> "$work/chat_v7.err" \
  && grep -q "chat template mistral-v7 dated 2025-05-09," "$work/chat_v7.err" \
  && [ "$(grep -c 'The current date is 2025-05-09' "$work/chat_v7.jsonl")" -eq 1 ] \
  && "$bin" data-preview --model "$model" --train_file "$work/chat_system.jsonl" --chat_template mistral-v7 \
  --output "$work/chat_v7.jsonl" 2> "$work/chat_v7.err" \
  && grep -q "chat template mistral-v7," "$work/chat_v7.err" && ! grep -q "current date" "$work/chat_v7.jsonl"
check "mistral-v7's date said only where a conversation holds it" $?
printf '{"messages": [{"role": "user", "content": "hi \xff"}, {"role": "assistant", "content": "x"}]}\n' > "$work/bad_utf8.jsonl"
"$bin" data-preview --model "$model" --train_file "$work/bad_utf8.jsonl" --chat_template llama2-chat > /dev/null 2> "$work/err.txt"
[ $? -eq 1 ] && grep -q "bad_utf8.jsonl: line 1 (record 0): invalid UTF-8" "$work/err.txt"
check "invalid UTF-8 in chat data: exit 1 naming the line and record" $?
out="$("$bin" generate --model "$model" --adapter "$work/chat_run" --template chat --chat_template llama2-chat \
  --system "Tell short stories." --prompt "Who is Lily?" --max_new_tokens 8 --dtype fp32 2>/dev/null)"
[ $? -eq 0 ] && [ -n "$out" ] && [[ "$out" != *"[INST]"* ]]
check "generate --template chat: the question through the chat template, only the answer printed" $?
"$bin" tokenize --tokenizer "$model" --text "Once upon a time" > "$work/tok.json"
grep -q '"ids":\[403,407,261,378\]' "$work/tok.json" && grep -q '"decoded":"Once upon a time"' "$work/tok.json"
check "tokenize: ids and the decode back" $?
"$bin" env > "$work/env.txt"
[ $? -eq 0 ] && grep -q "^zerolora: *[0-9]" "$work/env.txt" && grep -q "^oneDNN: *[0-9]" "$work/env.txt" &&
  grep -q "^cpu bf16 matmul: *\(yes\|no: \)" "$work/env.txt" && grep -q "^cuda backend: " "$work/env.txt"
check "env: the version, oneDNN's, bf16 on this CPU and the CUDA backend, exit 0" $?

mkdir -p "$work/taken" && echo keep > "$work/taken/README.txt"
"$bin" merge --model "$model" --adapter "$work/run" --output_dir "$work/taken" > /dev/null 2> "$work/err.txt"
[ $? -eq 2 ] && grep -q "not empty" "$work/err.txt" && [ "$(cat "$work/taken/README.txt")" = keep ]
check "merge into a non-empty directory: refused, contents kept" $?

exit $((failures > 0))
