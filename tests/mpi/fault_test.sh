#!/usr/bin/env bash
# A corrupt shard file seen only by rank 2 must end all 3 ranks promptly (not hang), with
# rank 2's message naming the file and a non-zero exit status.
# Usage: fault_test.sh MPIRUN FAULT_DRILL_BINARY FIXTURE_MODEL_DIR
set -uo pipefail
mpirun="$1"
drill="$2"
good="$3"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r "$good" "$work/bad"
chmod -R u+w "$work/bad"
shard="$(ls "$work/bad"/*.safetensors | head -1)"
truncate -s 1000 "$shard"  # a header that promises more data than the file holds

start=$(date +%s)
timeout 60 $mpirun --allow-run-as-root --oversubscribe --bind-to none -np 3 "$drill" "$good" "$work/bad" \
  > "$work/out.txt" 2>&1
code=$?
elapsed=$(( $(date +%s) - start ))
cat "$work/out.txt"
fail=0
[ "$code" -ne 0 ] || { echo "FAIL: exit status 0"; fail=1; }
[ "$code" -ne 124 ] || { echo "FAIL: hung (killed by timeout)"; fail=1; }
grep -q "rank 2 of 3: error: .*$(basename "$shard")" "$work/out.txt" || { echo "FAIL: rank 2's message missing"; fail=1; }
[ "$elapsed" -lt 30 ] || { echo "FAIL: took ${elapsed}s"; fail=1; }
[ "$fail" -eq 0 ] && echo "ok: all ranks ended in ${elapsed}s with exit status $code"
exit $fail
