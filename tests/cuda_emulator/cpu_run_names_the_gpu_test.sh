#!/usr/bin/env bash
# `zerolora train` on the CPU (the default --device) says so where a GPU is visible, and says
# nothing of GPUs where none is (CUDA_VISIBLE_DEVICES="" hides the emulated one).
# Usage: cpu_run_names_the_gpu_test.sh ZEROLORA_EMULATED DEMO_DIR
set -uo pipefail
emulated="$1" demo="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
run() {  # run NAME [ENV...]
  local name="$1"
  shift
  env "$@" "$emulated" train --model_name_or_path "$demo/stories260K-hf" \
    --train_file "$demo/instructions.json" --output_dir "$work/$name" --max_steps 1 \
    --max_seq_length 128 --save_strategy no --peak_tflops 1 > "$work/$name.log" 2>&1 ||
    { cat "$work/$name.log"; echo "FAIL: the run $name"; exit 1; }
}
note="device: the CPU, though 1 GPU is visible: --device cuda trains there"
run visible
grep -qF "$note" "$work/visible.log" || { cat "$work/visible.log"; echo "FAIL: no note of the GPU"; exit 1; }
run hidden CUDA_VISIBLE_DEVICES=
if grep -qF "visible: --device cuda" "$work/hidden.log"; then cat "$work/hidden.log"; echo "FAIL: a GPU named where none is visible"; exit 1; fi
echo "PASS: the CPU run names the visible GPU, and none where it is hidden"
