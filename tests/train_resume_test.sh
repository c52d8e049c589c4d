#!/usr/bin/env bash
# `zerolora train` checkpoints and resume, end to end on the real tiny model:
#  1. resuming from checkpoint-3 of a 6-step run gives steps 4-6 the exact losses of the
#     uninterrupted run, on 1 rank and on 2 ranks with partitioned LoRA state;
#  2. SIGTERM in the middle of a run finishes the step, saves, exits 0; resuming continues
#     exactly as a run that was never stopped;
#  3. a checkpoint resumes at another world size (same global batch), resharding the optimizer
#     state, and continues as the uninterrupted run;
#  4. bad resumes and output directories get one clear message and exit 1 or 2.
# Usage: train_resume_test.sh ZEROLORA MPIRUN DEMO_DIR (the repository's demo/)
set -uo pipefail
bin="$1"
mpirun="$2 --allow-run-as-root --oversubscribe --bind-to none"
model="$3/stories260K-hf"
data="$3/instructions.json"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null; [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"' EXIT
source "$(dirname "$0")/check.sh"
[ -f "$model/config.json" ] && [ -f "$data" ] || { echo "train_resume_test: no demo model or data in $3" >&2; exit 1; }

common=(--model_name_or_path "$model" --train_file "$data" --max_seq_length 192 --per_device_train_batch_size 2
        --learning_rate 2e-3 --lr_scheduler_type constant --logging_steps 1 --lora_rank 4 --lora_alpha 16
        --lora_dropout 0.1 --lora_target_modules q_proj k_proj v_proj o_proj --threads 1 --seed 7)
losses() {  # losses() METRICS FIRST LAST: the loss of each step in [FIRST, LAST]
  python3 -c "
import json, sys
rows = [json.loads(l) for l in open('$1') if l.strip()]
print(' '.join('%.9f' % r['loss'] for r in rows if 'loss' in r and $2 <= r['step'] <= $3))"
}

for launcher in "single" "mpi"; do
  if [ "$launcher" = single ]; then run=("$bin"); extra=(); else run=($mpirun -np 2 "$bin"); extra=(--deepspeed "$work/ds.json"); fi
  cat > "$work/ds.json" <<'JSON'
{"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
 "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
JSON
  rm -rf "$work/full" "$work/resumed"
  "${run[@]}" train "${common[@]}" "${extra[@]}" --output_dir "$work/full" --max_steps 6 --save_steps 3 > "$work/full.log" 2>&1
  check "$launcher: 6-step run" $?
  mkdir -p "$work/resumed"
  cp -r "$work/full/checkpoint-3" "$work/resumed/"
  cp -r "$work/full/checkpoint-3" "$work/checkpoint-$launcher"
  "${run[@]}" train "${common[@]}" "${extra[@]}" --output_dir "$work/resumed" --max_steps 6 --save_steps 3 \
    --resume_from_checkpoint last > "$work/resumed.log" 2>&1
  check "$launcher: resume from checkpoint-3" $?
  a="$(losses "$work/full/metrics.jsonl" 4 6)"
  b="$(losses "$work/resumed/metrics.jsonl" 4 6)"
  [ -n "$a" ] && [ "$a" = "$b" ]
  check "$launcher: steps 4-6 after resuming equal the uninterrupted run ($a | $b)" $?
  cp "$work/full/metrics.jsonl" "$work/full-$launcher.jsonl"
  # The finished run's last checkpoint (checkpoint-6, as HF's Trainer writes): the same command
  # again is refused with nothing to do and its outputs untouched.
  sum="$(cd "$work/full" && sha256sum train_results.json adapter_model.safetensors metrics.jsonl)"
  "${run[@]}" train "${common[@]}" "${extra[@]}" --output_dir "$work/full" --max_steps 6 --save_steps 3 \
    --resume_from_checkpoint last > "$work/again.log" 2>&1
  [ $? -eq 1 ] && grep -q "checkpoint-6 is at step 6 and this run has 6 steps: nothing is left to train" "$work/again.log" \
    && [ "$sum" = "$(cd "$work/full" && sha256sum train_results.json adapter_model.safetensors metrics.jsonl)" ]
  check "$launcher: a finished run resumed again: refused (exit 1), its outputs untouched" $?
done

# SIGTERM: finish the step, save, exit 0; then resume to two steps further.
"$bin" train "${common[@]}" --output_dir "$work/stopped" --max_steps 100000 --save_strategy no > "$work/stopped.log" 2>&1 &
pid=$!
for _ in $(seq 600); do
  [ -f "$work/stopped/metrics.jsonl" ] && [ "$(wc -l < "$work/stopped/metrics.jsonl")" -ge 3 ] && break
  sleep 0.1
done
kill -TERM $pid
wait $pid
code=$?
n="$(sed -n 's/.*stopped by signal after step \([0-9]*\).*/\1/p' "$work/stopped.log")"
[ "$code" -eq 0 ] && [ -n "$n" ] && [ -f "$work/stopped/checkpoint-$n/trainer_state.json" ]
check "SIGTERM: exit 0, checkpoint-$n saved" $? ||
  { echo "  exit status $code; $(ls "$work/stopped" | tr '\n' ' ')"; tail -4 "$work/stopped.log"; }
if [ -n "$n" ]; then
  m=$((n + 2))
  "$bin" train "${common[@]}" --output_dir "$work/stopped" --max_steps $m --save_strategy no \
    --resume_from_checkpoint last > "$work/continue.log" 2>&1
  "$bin" train "${common[@]}" --output_dir "$work/straight" --max_steps $m --save_strategy no > "$work/straight.log" 2>&1
  a="$(losses "$work/straight/metrics.jsonl" 1 $m)"
  b="$(losses "$work/stopped/metrics.jsonl" 1 $m)"
  [ -n "$a" ] && [ "$a" = "$b" ]
  check "stop + resume to step $m equals an uninterrupted run" $?
fi

# Bad resumes and output directories.
"$bin" train "${common[@]}" --output_dir "$work/full" --max_steps 6 > /dev/null 2> "$work/err.txt"
[ $? -eq 2 ] && grep -q "already holds a training run" "$work/err.txt"
check "an output_dir with a run: refused without --overwrite_output_dir" $?
mkdir -p "$work/other" && echo hi > "$work/other/notes.txt"
"$bin" train "${common[@]}" --output_dir "$work/other" --max_steps 1 --overwrite_output_dir > /dev/null 2> "$work/err.txt"
[ $? -eq 2 ] && grep -q "notes.txt" "$work/err.txt" && [ -f "$work/other/notes.txt" ]
check "an output_dir with foreign files: refused, files untouched" $?
# A checkpoint from before per-layer LoRA partitioning (no such metadata; nothing partitioned)
# still resumes, exactly.
mkdir -p "$work/legacy" && cp -r "$work/checkpoint-single" "$work/legacy/checkpoint-3"
python3 - "$work/legacy/checkpoint-3/optimizer-rank0.safetensors" <<'PY' || failures=$((failures + 1))
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
for key in ("partitioning", "persistence_threshold"):
    header["__metadata__"].pop(key)
text = json.dumps(header).encode()
text += b" " * (-len(text) % 8)
open(sys.argv[1], "wb").write(struct.pack("<Q", len(text)) + text + raw[8 + n:])
PY
"$bin" train "${common[@]}" --output_dir "$work/legacy" --max_steps 6 --save_steps 3 \
  --resume_from_checkpoint last > "$work/legacy.log" 2>&1
a="$(losses "$work/full-single.jsonl" 4 6)"
b="$(losses "$work/legacy/metrics.jsonl" 4 6)"
[ -n "$a" ] && [ "$a" = "$b" ]
check "an older checkpoint (no partitioning metadata) resumes exactly ($a | $b)" $?
"$bin" train "${common[@]}" --output_dir "$work/resumed" --max_steps 6 --lora_rank 8 \
  --resume_from_checkpoint "$work/checkpoint-single" > /dev/null 2> "$work/err.txt"
[ $? -eq 1 ] && grep -q "lora: checkpoint 4/" "$work/err.txt" \
  && grep -q "(set by --lora_rank, --lora_alpha," "$work/err.txt"
check "resume with another LoRA rank: refused, naming the setting and its flags" $?
$mpirun -np 2 "$bin" train "${common[@]}" --output_dir "$work/w2" --max_steps 6 \
  --resume_from_checkpoint "$work/checkpoint-single" > "$work/w2.txt" 2>&1
[ $? -eq 1 ] && grep -q "global_batch: checkpoint 2, now 4" "$work/w2.txt"
check "resume at another world size with another global batch: refused, naming it" $?

# Another world size with the same global batch: the optimizer state is resharded and the run
# goes on as the uninterrupted one. fp32 mode, where results are W-independent up to
# summation order (the MPI tests' 1e-5); one micro-batch of 1 sequence everywhere.
# 1 rank (LoRA state replicated) -> 2 ranks (partitioned, threshold 0) -> 4 ranks and -> 1.
close() {  # close A B: the two loss lists agree within 1e-5 relative
  python3 -c "
a, b = '$1'.split(), '$2'.split()
import sys
sys.exit(0 if len(a) == len(b) > 0 and all(abs(float(x) - float(y)) <= 1e-5 * abs(float(x)) for x, y in zip(a, b)) else 1)"
}
fp32=("${common[@]}" --bf16 false --per_device_train_batch_size 1 --max_steps 6)
"$bin" train "${fp32[@]}" --gradient_accumulation_steps 4 --output_dir "$work/r1" --save_steps 3 > /dev/null 2>&1
mkdir -p "$work/r2" "$work/r4" "$work/r1b"
cp -r "$work/r1/checkpoint-3" "$work/r2/"
$mpirun -np 2 "$bin" train "${fp32[@]}" --gradient_accumulation_steps 2 --deepspeed "$work/ds.json" \
  --output_dir "$work/r2" --save_steps 1 --resume_from_checkpoint last > "$work/r2.log" 2>&1
a="$(losses "$work/r1/metrics.jsonl" 4 6)"
b="$(losses "$work/r2/metrics.jsonl" 4 6)"
grep -q "written by 1 rank(s); optimizer state resharded for 2" "$work/r2.log" && close "$a" "$b"
check "1-rank checkpoint resumed on 2 ranks (replicated -> partitioned): steps 4-6 as uninterrupted ($a | $b)" $?
a="$(losses "$work/r1/metrics.jsonl" 5 6)"
cp -r "$work/r2/checkpoint-4" "$work/r4/"
$mpirun -np 4 "$bin" train "${fp32[@]}" --deepspeed "$work/ds.json" --output_dir "$work/r4" \
  --resume_from_checkpoint last > /dev/null 2>&1
b="$(losses "$work/r4/metrics.jsonl" 5 6)"
close "$a" "$b"
check "2-rank checkpoint resumed on 4 ranks (partitioned, resharded): steps 5-6 as uninterrupted ($a | $b)" $?
cp -r "$work/r2/checkpoint-4" "$work/r1b/"
"$bin" train "${fp32[@]}" --gradient_accumulation_steps 4 --output_dir "$work/r1b" \
  --resume_from_checkpoint last > /dev/null 2>&1
b="$(losses "$work/r1b/metrics.jsonl" 5 6)"
close "$a" "$b"
check "2-rank checkpoint resumed on 1 rank (partitioned -> replicated): steps 5-6 as uninterrupted ($a | $b)" $?
exit $((failures > 0))
