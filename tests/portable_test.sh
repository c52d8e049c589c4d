#!/usr/bin/env bash
# The default (portable) build runs on older x86-64 CPUs: the executable trains under emulated
# CPUs without AVX-512 (qemu-user: Haswell = x86-64-v3, AVX2) and without AVX (Nehalem =
# x86-64-v2), where the kernels' baseline and AVX2 clones run, and gives the losses it gives on
# this machine (fp32, within 1e-5); bf16, which oneDNN implements with AVX-512 only, is refused
# there with the reason, before anything is written.
# Usage: portable_test.sh ZEROLORA DEMO_DIR NATIVE_BUILD(ON/OFF)
set -uo pipefail
bin="$1"
model="$2/stories260K-hf"
data="$2/instructions.json"
if [ "$3" = "ON" ]; then
  echo "skipped: this is a -DZEROLORA_NATIVE=ON build, made for this machine's CPU only"
  exit 77
fi
if [ "$(uname -m)" != "x86_64" ] || ! command -v qemu-x86_64 > /dev/null; then
  echo "skipped: needs an x86-64 host and qemu-x86_64 (Debian: qemu-user; scripts/install-deps.sh --test installs it)"
  exit 77
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
source "$(dirname "$0")/check.sh"
# --peak_tflops: MFU's GEMM-rate measurement (1024^3 products) takes minutes under emulation.
train() {  # train OUTPUT_DIR [qemu CPU]: three fp32 steps
  local out="$1"
  shift
  ${1:+qemu-x86_64 -cpu "$1"} "$bin" train --model_name_or_path "$model" --train_file "$data" \
    --output_dir "$out" --max_steps 3 --per_device_train_batch_size 2 --max_seq_length 192 \
    --bf16 false --logging_steps 1 --save_strategy no --threads 2 --peak_tflops 1
}
losses() { sed -n 's/.*"loss":\([0-9.e+-]*\),.*/\1/p' "$1/metrics.jsonl" | tr '\n' ' '; }

train "$work/here" > "$work/here.log" 2>&1
check "this machine: 3 fp32 steps" $? || tail -3 "$work/here.log"
for cpu in Haswell Nehalem; do
  train "$work/$cpu" "$cpu" > "$work/$cpu.log" 2>&1
  code=$?
  python3 - "$(losses "$work/here")" "$(losses "$work/$cpu")" <<'PY'
import sys
here, there = [list(map(float, a.split())) for a in sys.argv[1:3]]
sys.exit(0 if len(here) == 3 and len(there) == 3 and all(abs(a - b) <= 1e-5 * abs(a) for a, b in zip(here, there)) else 1)
PY
  same=$?
  [ $code -eq 0 ] && [ $same -eq 0 ]
  check "emulated $cpu CPU: trains, losses ($(losses "$work/$cpu")) equal this machine's ($(losses "$work/here"))" $? ||
    tail -3 "$work/$cpu.log"
done
qemu-x86_64 -cpu Haswell "$bin" train --model_name_or_path "$model" --train_file "$data" \
  --output_dir "$work/bf16" --max_steps 1 > "$work/bf16.log" 2>&1
[ $? -eq 1 ] && grep -q "bf16 matmuls are not available on this CPU.*--bf16 false" "$work/bf16.log" && [ ! -e "$work/bf16" ]
check "emulated Haswell, bf16: refused with the reason, nothing written" $?
exit $((failures > 0))
