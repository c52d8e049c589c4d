#!/usr/bin/env bash
# A rank killed outright (SIGKILL: an OOM kill, a lost node) in the middle of a ZeRO-3 training
# run ends every rank within seconds with a non-zero status and the launcher's message naming
# the rank, and nothing hangs. Run by ctest on the CPU, and by the GPU check with
# --device cuda --ddp_backend mpi (the ranks sharing the GPU).
# Usage: kill_rank_test.sh MPIRUN ZEROLORA DEMO_DIR [EXTRA TRAIN FLAGS...]
set -uo pipefail
mpirun="$1 --allow-run-as-root --oversubscribe --bind-to none"
bin="$2"
demo="$3"
shift 3
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2> /dev/null; rm -rf "$work"' EXIT
cat > "$work/ds.json" << 'JSON'
{"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
 "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
JSON
$mpirun -np 3 "$bin" train --model_name_or_path "$demo/stories260K-hf" \
  --train_file "$demo/instructions.json" --output_dir "$work/out" --deepspeed "$work/ds.json" \
  --max_seq_length 192 --per_device_train_batch_size 2 --num_train_epochs 1000 --logging_steps 1 \
  --save_strategy no --threads 1 --disable_tqdm true "$@" > "$work/log.txt" 2>&1 &
launcher=$!
# Wait for training steps, then kill the last rank (its process has the newest pid).
for _ in $(seq 1 600); do
  [ "$(cat "$work/out/metrics.jsonl" 2> /dev/null | grep -c '"loss"')" -ge 2 ] && break
  kill -0 $launcher 2> /dev/null || break
  sleep 0.1
done
victim="$(pgrep -n -f "$bin train --model_name_or_path $demo/stories260K-hf")"
if [ -z "$victim" ] || ! kill -0 $launcher 2> /dev/null; then
  cat "$work/log.txt"
  echo "FAIL: the run did not reach its second step"
  exit 1
fi
start=$(date +%s%N)
kill -KILL "$victim"
# The others must be gone within 30 s; past that the job counts as hung.
for _ in $(seq 1 300); do
  kill -0 $launcher 2> /dev/null || break
  sleep 0.1
done
if kill -0 $launcher 2> /dev/null; then
  cat "$work/log.txt"
  echo "FAIL: 30 s after rank's SIGKILL the job is still running (hung)"
  exit 1
fi
wait $launcher
code=$?
elapsed=$(( ($(date +%s%N) - start) / 1000000 ))
tail -5 "$work/log.txt"
fail=0
[ "$code" -ne 0 ] || { echo "FAIL: exit status 0 after a rank was killed"; fail=1; }
grep -q -i "signal 9\|killed" "$work/log.txt" || { echo "FAIL: no message about the killed rank"; fail=1; }
if pgrep -f "$bin train --model_name_or_path $demo/stories260K-hf" > /dev/null; then
  echo "FAIL: ranks left running"
  fail=1
fi
[ "$fail" -eq 0 ] && echo "ok: every rank ended ${elapsed} ms after a rank's SIGKILL, exit status $code"
exit $fail
