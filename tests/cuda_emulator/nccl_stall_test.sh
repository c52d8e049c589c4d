#!/usr/bin/env bash
# A rank that stalls (alive, never joining a collective) must not hang an NCCL job: the other
# rank's watchdog ends it after --ddp_timeout (3 s in the drill) with a message naming the
# collective, exit status 70, and the launcher ends the stalled rank. With
# ZEROLORA_EMULATED_NCCL_ABORT_HANGS=1 the watchdog's ncclCommAbort never returns, and the
# abort's own deadline (10 s) ends the process all the same.
# Usage: nccl_stall_test.sh MPIRUN DRILL_BINARY
set -uo pipefail
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
ZEROLORA_EMULATED_GPUS=2 timeout 60 $1 --allow-run-as-root --oversubscribe --bind-to none -np 2 \
  "$2" > "$work/out.txt" 2>&1
code=$?
elapsed=$(($(date +%s) - start))
cat "$work/out.txt"
fail=0
[ "$code" -ne 124 ] || { echo "FAIL: hung (killed by timeout)"; fail=1; }
[ "$code" -eq 70 ] || [ "$code" -eq 124 ] || { echo "FAIL: exit status $code, not the watchdog's 70"; fail=1; }
grep -q "rank 0 of 2: NCCL all_gather of 4096 bytes per rank did not finish within 3 s" "$work/out.txt" ||
  { echo "FAIL: rank 0's watchdog message is missing"; fail=1; }
if [ "${ZEROLORA_EMULATED_NCCL_ABORT_HANGS:-0}" = 1 ]; then
  grep -q "rank 0: ncclCommAbort did not return within 10 s; ending the process" "$work/out.txt" ||
    { echo "FAIL: the abort's deadline message is missing"; fail=1; }
fi
[ "$elapsed" -lt 40 ] || { echo "FAIL: took ${elapsed}s"; fail=1; }
[ "$fail" -eq 0 ] && echo "ok: the job ended ${elapsed}s after it began (3 s timeout), exit status $code"
exit $fail
