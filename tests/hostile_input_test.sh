#!/usr/bin/env bash
# Bad input and faults, tried as a user would: each case is a command line, its exit code and
# the first line of its message. Also: a run forced non-finite leaves the previous adapter
# and the last checkpoint byte-identical, and writes nothing for the failed step.
# Usage: hostile_input_test.sh ZEROLORA_BINARY DEMO_DIR MPIRUN
set -uo pipefail
bin="$1"
model="$2/stories260K-hf"
data="$2/instructions.json"
mpirun=("$3" --allow-run-as-root --oversubscribe --bind-to none)
source "$(dirname "$0")/check.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

train=("$bin" train --model_name_or_path "$model" --train_file "$data" --max_seq_length 128
  --per_device_train_batch_size 2 --logging_steps 1 --threads 2)

# expect CODE 'FIRST LINE PATTERN' COMMAND...: runs the command, checks its exit code and that
# the first line of its stderr matches the pattern (grep -E).
expect() {
  local code="$1" pattern="$2"
  shift 2
  "$@" > "$work/out.txt" 2> "$work/err.txt"
  local got=$?
  local first
  first="$(grep -v '^Run with --help' "$work/err.txt" | head -n 1)"
  if [ "$got" -eq "$code" ] && [[ "$first" =~ $pattern ]]; then
    return 0
  fi
  echo "  exit $got (expected $code); first line: $first" >&2
  return 1
}

# 1. Non-finite flags are refused when parsed.
expect 2 '^--learning_rate: must be a finite number >= 0, got nan$' "${train[@]}" --output_dir "$work/o" --learning_rate nan
check "--learning_rate nan: exit 2" $?
expect 2 '^--learning_rate: must be a finite number >= 0, got inf$' "${train[@]}" --output_dir "$work/o" --learning_rate inf
check "--learning_rate inf: exit 2" $?
expect 2 '^--adam_beta2: must be a finite number >= 0 and < 1, got 1$' "${train[@]}" --output_dir "$work/o" --adam_beta2 1
check "--adam_beta2 1: exit 2" $?
expect 2 '^--max_grad_norm: must be a finite number >= 0, got -?nan$' "${train[@]}" --output_dir "$work/o" --max_grad_norm -nan
check "--max_grad_norm -nan: exit 2" $?
[ ! -e "$work/o" ]
check "refused flags: nothing written" $?

# 1. A model whose weights hold a NaN: reported at load, naming file, tensor and element.
cp -r "$model" "$work/nan_model"
python3 - "$work/nan_model/model.safetensors" <<'PY'
import json, struct, sys
path = sys.argv[1]
raw = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
info = header["model.layers.2.self_attn.k_proj.weight"]
assert info["dtype"] == "F32", info["dtype"]
at = 8 + n + info["data_offsets"][0] + 4 * 70   # element 70: row 1, column 6 of [*, 64]
raw[at:at + 4] = struct.pack("<f", float("nan"))
open(path, "wb").write(raw)
PY
expect 1 "^zerolora: error: .*model.safetensors: tensor 'model.layers.2.self_attn.k_proj.weight' holds nan at element 70 \(row 1, column 6\)" \
  "${train[@]}" --model_name_or_path "$work/nan_model" --output_dir "$work/nan_run" --max_steps 2
check "a NaN in the base weights: exit 1 at load, naming the tensor and element" $?
[ ! -e "$work/nan_run/adapter_model.safetensors" ]
check "a NaN in the base weights: no adapter written" $?

# 1. Non-finite training: stops at the step, names micro-batch and layer; earlier work kept.
"${train[@]}" --output_dir "$work/good" --max_steps 6 --save_steps 2 --lr_scheduler_type constant > /dev/null 2>&1
check "(control) a clean six-step run" $?
mkdir -p "$work/poisoned"
cp "$work/good/adapter_model.safetensors" "$work/good/adapter_config.json" "$work/poisoned/"
(cd "$work/poisoned" && sha256sum adapter_model.safetensors adapter_config.json) > "$work/adapter.sha"
"${train[@]}" --output_dir "$work/poisoned" --overwrite_output_dir --max_steps 6 --save_steps 2 \
  --lr_scheduler_type constant --debug_poison_step 5 --debug_poison_layer 3 --save_total_limit 0 \
  > /dev/null 2> "$work/err.txt"
code=$?
[ "$code" -eq 1 ] && grep -q "^zerolora: error: training went non-finite at step 5: the loss is nan" "$work/err.txt" \
  && grep -q "micro-batch 0 (starting at training sequence [0-9]*), and its forward pass first went non-finite in the output of decoder layer 3 (model.layers.3)" "$work/err.txt" \
  && grep -q "the last checkpoint (.*checkpoint-4)" "$work/err.txt"
check "NaN at step 5: exit 1 naming the step, the micro-batch and layer 3" $? || cat "$work/err.txt"
# --overwrite_output_dir removed the copied adapter when the run started; what counts is that
# the failed run wrote none: the earlier adapter in a separate directory stays, as checked next.
[ ! -e "$work/poisoned/adapter_model.safetensors" ] && [ ! -e "$work/poisoned/checkpoint-6" ] \
  && [ ! -e "$work/poisoned/checkpoint-5" ] && [ ! -e "$work/poisoned/train_results.json" ]
check "NaN at step 5: no adapter, no checkpoint and no summary written for it" $?
cmp -s "$work/good/checkpoint-4/adapter_model.safetensors" "$work/poisoned/checkpoint-4/adapter_model.safetensors" \
  && cmp -s "$work/good/checkpoint-4/optimizer-rank0.safetensors" "$work/poisoned/checkpoint-4/optimizer-rank0.safetensors" \
  && cmp -s "$work/good/checkpoint-2/adapter_model.safetensors" "$work/poisoned/checkpoint-2/adapter_model.safetensors"
check "NaN at step 5: checkpoints 2 and 4 byte-identical to the clean run's" $?
# Resuming in place: the earlier adapter of a finished run stays byte-identical when the
# continued run fails.
cp -r "$work/good" "$work/resumed"
(cd "$work/resumed" && sha256sum adapter_model.safetensors adapter_config.json checkpoint-4/*) > "$work/resumed.sha"
"${train[@]}" --output_dir "$work/resumed" --resume_from_checkpoint "$work/resumed/checkpoint-4" \
  --max_steps 6 --save_steps 2 --lr_scheduler_type constant --debug_poison_step 6 > /dev/null 2> "$work/err.txt"
code=$?
[ "$code" -eq 1 ] && grep -q "non-finite at step 6" "$work/err.txt" \
  && (cd "$work/resumed" && sha256sum -c --quiet "$work/resumed.sha")
check "NaN at step 6 after a resume: the earlier adapter and checkpoint-4 byte-identical" $?
"${train[@]}" --output_dir "$work/skipping" --max_steps 6 --lr_scheduler_type constant --debug_poison_step 3 \
  --skip_nonfinite_steps 1 > "$work/out.txt" 2>&1
code=$?
[ "$code" -eq 0 ] && grep -q "warning: skipped step 3" "$work/out.txt" \
  && grep -q '"skipped_steps": 1' "$work/skipping/train_results.json" && [ -f "$work/skipping/adapter_model.safetensors" ]
check "--skip_nonfinite_steps 1: the NaN step skipped and counted, the run finishes" $?
python3 - "$work/skipping/adapter_model.safetensors" <<'PY'
import json, math, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
values = struct.unpack(f"<{(len(raw) - 8 - n) // 4}f", raw[8 + n:])
sys.exit(0 if all(math.isfinite(v) for v in values) and any(v != 0 for v in values) else 1)
PY
check "--skip_nonfinite_steps 1: the adapter is finite" $?
expect 1 '^zerolora: error: training went non-finite at step 2' \
  "${train[@]}" --output_dir "$work/skip_limit" --max_steps 6 --debug_poison_step 2 --learning_rate 0.001
check "--skip_nonfinite_steps 0 (default): the first NaN step ends the run" $?

# 2. A batch larger than the data: one partial batch per epoch, said, not the data repeated.
"${train[@]}" --output_dir "$work/big_batch" --per_device_train_batch_size 100000 --max_steps 2 \
  --save_strategy no > "$work/out.txt" 2>&1
code=$?
[ "$code" -eq 0 ] && grep -q "training set has \([0-9]*\) sequences, fewer than one global batch of 100000: each epoch is one batch of \1 sequences" "$work/out.txt"
check "batch 100000 on 370 sequences: one batch of them per epoch, said" $?
# A run the machine cannot hold is refused before the model is read, with the arithmetic.
cp -r "$model" "$work/huge"
python3 - "$work/huge/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c.update(hidden_size=16384, intermediate_size=65536, num_hidden_layers=120, num_attention_heads=128,
         num_key_value_heads=8)
json.dump(c, open(sys.argv[1], "w"))
PY
expect 1 '^zerolora: error: this run needs about [0-9.]+ GiB per rank .* more than the [0-9.]+ GiB available' \
  "${train[@]}" --model_name_or_path "$work/huge" --output_dir "$work/huge_run" --max_steps 1
check "a 1.6T-parameter config on this machine: refused up front with the arithmetic" $?

# 3. File-system failures on a path the user gave: exit 1, the path and the reason.
echo file > "$work/a_file"
expect 1 "^zerolora: error: $work/a_file/out: cannot create --output_dir: Not a directory$" \
  "${train[@]}" --output_dir "$work/a_file/out" --max_steps 1
check "--output_dir under a file: exit 1 naming the path and reason" $?
expect 1 "^zerolora: error: $work/a_file: cannot create the parent of --output_dir: " \
  "$bin" merge --model "$model" --adapter "$work/good" --output_dir "$work/a_file/merged"
check "merge --output_dir under a file: exit 1 naming the path" $?

# 4. .json files that start with '{': the common wrapped shapes read, the others explained.
python3 - "$data" "$work" <<'PY'
import json, sys
records = json.load(open(sys.argv[1]))[:20]
out = sys.argv[2]
json.dump({"data": records}, open(f"{out}/wrapped.json", "w"), indent=2)
json.dump({k: [r[k] for r in records] for k in records[0]}, open(f"{out}/columns.json", "w"), indent=2)
json.dump(records[0], open(f"{out}/single.json", "w"), indent=2)
json.dump({"train": records, "test": records}, open(f"{out}/two.json", "w"), indent=2)
json.dump({"version": 2, "meta": {"n": 20}}, open(f"{out}/other.json", "w"), indent=2)
open(f"{out}/broken.json", "w").write('{\n  "data": [\n')
PY
for shape in wrapped:20 columns:20 single:1; do
  "$bin" data-preview --model "$model" --train_file "$work/${shape%%:*}.json" --num_examples 1 --output /dev/null \
    2> "$work/err.txt"
  [ $? -eq 0 ] && grep -q "^data-preview: ${shape##*:} records read" "$work/err.txt"
  check "a pretty-printed .json ('${shape%%:*}'): read, ${shape##*:} records" $?
done
expect 1 "^zerolora: error: $work/two.json: the object holds several arrays of records \('test', 'train'\)" \
  "$bin" data-preview --model "$model" --train_file "$work/two.json" --output /dev/null
check "an object with two arrays of records: refused, naming them" $?
expect 1 "^zerolora: error: $work/other.json: expected an array of records \[\{...\}, ...\], one record per line" \
  "$bin" data-preview --model "$model" --train_file "$work/other.json" --output /dev/null
check "an object that holds no records: says what was expected" $?
expect 1 "^zerolora: error: $work/broken.json: neither JSON Lines .* nor one JSON document" \
  "$bin" data-preview --model "$model" --train_file "$work/broken.json" --output /dev/null
check "a broken pretty-printed .json: says what was expected" $?

# 5. Range messages a person would write.
expect 2 '^--per_device_train_batch_size: must be a whole number >= 1, got 0$' "${train[@]}" --output_dir "$work/o" --per_device_train_batch_size 0
check "batch size 0: exit 2, a readable range" $?
expect 2 '^--gradient_accumulation_steps: must be a whole number >= 1, got -3$' "${train[@]}" --output_dir "$work/o" --gradient_accumulation_steps -3
check "accumulation -3: exit 2, a readable range" $?
expect 2 '^--max_seq_length: must be a whole number between 2 and 1048576, got 1$' "${train[@]}" --output_dir "$work/o" --max_seq_length 1
check "max_seq_length 1: exit 2, a readable range" $?

# 6. The smaller ones.
expect 2 "^zerolora: --input_ids: token id 4294967301 \(item 2\) is outside the vocabulary of .* \(0 to 511\)" \
  "$bin" forward --model "$model" --input_ids 1,4294967301 --output "$work/f.safetensors"
check "forward: a token id past the vocabulary is refused, not wrapped" $?
expect 2 '^zerolora: give the tokens: --input_ids 1,2,3 or --prompt TEXT' \
  "$bin" forward --model "$model" --output "$work/f.safetensors"
check "forward with neither --prompt nor --input_ids: exit 2" $?
"$bin" forward --model "$model" --input_ids 1 --output "$work/f.safetensors" > "$work/out.txt" 2>&1
[ $? -eq 0 ] && grep -q "no loss (one token: nothing to predict)" "$work/out.txt"
check "forward on one token: no loss reported rather than 0" $?
expect 2 '^--temperature: must be a finite number between 0 and 100, got nan$' "$bin" generate --model "$model" --prompt x --temperature nan
check "generate --temperature nan: exit 2" $?
expect 2 '^--top_k: must be a whole number >= 0, got -5$' "$bin" generate --model "$model" --prompt x --top_k -5
check "generate --top_k -5: exit 2" $?
expect 2 '^zerolora: nothing to train: --num_train_epochs is 0 and --max_steps is 0' \
  "${train[@]}" --output_dir "$work/o" --max_steps 0 --num_train_epochs 0
check "--max_steps 0 --num_train_epochs 0: nothing to train, exit 2" $?
echo '{"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 2}}' > "$work/ds2.json"
"${train[@]}" --output_dir "$work/stage2" --deepspeed "$work/ds2.json" --max_steps 1 --save_strategy no > "$work/out.txt" 2>&1
[ $? -eq 0 ] && grep -q "ZeRO stage 2" "$work/out.txt"
check "a DeepSpeed config with stage 2: runs as documented (one rank)" $?

# Two ranks: they agree on a non-finite step (one rank's NaN is every rank's stop), and ZeRO
# stage 2 (the base whole on every rank, the LoRA partitioned) trains as one rank does. The
# messages are counted, not the lines: mpirun may forward two ranks' lines merged into one.
"${mpirun[@]}" -np 2 "${train[@]}" --threads 1 --output_dir "$work/mpi_nan" --max_steps 4 \
  --debug_poison_step 3 --debug_poison_layer 1 > /dev/null 2> "$work/err.txt"
code=$?
[ "$code" -eq 1 ] && [ "$(grep -oP "error: training went non-finite at step 3: .*?micro-batch 0 of rank 0 .*?decoder layer 1" "$work/err.txt" | wc -l)" -eq 2 ] \
  && [ ! -e "$work/mpi_nan/adapter_model.safetensors" ]
check "two ranks, a NaN on rank 0 at step 3: both ranks stop there with the same message" $? || cat "$work/err.txt"
for w in 1 2; do
  "${mpirun[@]}" -np "$w" "${train[@]}" --threads 1 --output_dir "$work/stage2_w$w" --max_steps 4 --bf16 false \
    --per_device_train_batch_size $((4 / w)) --deepspeed "$work/ds2.json" --save_strategy no > "$work/out.txt" 2>&1
done
python3 - "$work/stage2_w1/metrics.jsonl" "$work/stage2_w2/metrics.jsonl" <<'PY'
import json, sys
losses = [[json.loads(l)["loss"] for l in open(p) if '"loss"' in l] for p in sys.argv[1:]]
assert len(losses[0]) == 4 and len(losses[1]) == 4, losses
sys.exit(0 if all(abs(a - b) <= 1e-5 * abs(a) for a, b in zip(*losses)) else 1)
PY
check "ZeRO stage 2 on two ranks: the losses of one rank (fp32, within 1e-5)" $?
grep -q "note: ZeRO stage 2: the base model is whole on every rank" "$work/out.txt"
check "ZeRO stage 2 on two ranks: says what it partitions" $?

exit $((failures > 0))
