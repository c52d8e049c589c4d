#!/usr/bin/env bash
# `zerolora train --device cuda` on a GPU the backend cannot train on ends at once, exit code 1,
# naming the GPU and why, with nothing written: a compute capability below 8.0
# (ZEROLORA_EMULATED_GPU_CAPABILITY=7.5, a Turing GPU), or a build with no kernels for the GPU's
# capability (ZEROLORA_EMULATED_NO_KERNEL_IMAGE=1, as CUDA reports it), saying how to rebuild, or
# only PTX the driver cannot compile (=ptx), saying to update the driver.
# An Ada GPU (8.6) trains; a CPU run names the unfit GPU instead of offering it, and offers a fit
# one beside it by its number; `zerolora env` reports each GPU's fitness and the libraries.
# Usage: unsupported_gpu_test.sh ZEROLORA_EMULATED DEMO_DIR
set -uo pipefail
emulated="$1" demo="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { cat "$work/$1.log"; echo "FAIL: $2"; exit 1; }
run() {  # run NAME DEVICE [ENV...]: the run's exit code in $rc, its output in NAME.log
  local name="$1" device="$2"
  shift 2
  env "$@" "$emulated" train --device "$device" --model_name_or_path "$demo/stories260K-hf" \
    --train_file "$demo/instructions.json" --output_dir "$work/$name" --max_steps 1 \
    --max_seq_length 128 --save_strategy no --peak_tflops 1 > "$work/$name.log" 2>&1
  rc=$?
}
refused() {  # refused NAME TEXT...: exit code 1, each TEXT in the message, no output folder
  local name="$1"
  shift
  [ "$rc" = 1 ] || fail "$name" "exit code $rc, not 1"
  for text in "$@"; do grep -qF -- "$text" "$work/$name.log" || fail "$name" "no '$text'"; done
  [ ! -e "$work/$name" ] || fail "$name" "the refused run wrote $work/$name"
}
run turing cuda ZEROLORA_EMULATED_GPU_CAPABILITY=7.5
refused turing "--device cuda:0 (" "compute capability 7.5" "needs 8.0 or newer"
run no_image cuda ZEROLORA_EMULATED_NO_KERNEL_IMAGE=1
refused no_image "no kernels for its compute capability 9.0" "-DCMAKE_CUDA_ARCHITECTURES=90" \
  "cudaErrorNoKernelImageForDevice"
run old_driver cuda ZEROLORA_EMULATED_NO_KERNEL_IMAGE=ptx
refused old_driver "cannot compile this zerolora's PTX for compute capability 9.0" \
  "update the NVIDIA driver" "cudaErrorUnsupportedPtxVersion"
run ada cuda ZEROLORA_EMULATED_GPU_CAPABILITY=8.6
[ "$rc" = 0 ] && [ -s "$work/ada/adapter_model.safetensors" ] || fail ada "an 8.6 GPU did not train"
run cpu_beside_turing cpu ZEROLORA_EMULATED_GPU_CAPABILITY=7.5
[ "$rc" = 0 ] || fail cpu_beside_turing "the CPU run failed beside an unfit GPU"
grep -qF "device: the CPU (cuda:0 cannot: compute capability 7.5" "$work/cpu_beside_turing.log" ||
  fail cpu_beside_turing "the CPU run does not name the unfit GPU"
! grep -qF -- "--device cuda trains there" "$work/cpu_beside_turing.log" ||
  fail cpu_beside_turing "the CPU run offers a GPU that cannot train"
# Beside a fit GPU, the unfit one is named and the fit one offered by its number (--device cuda
# alone would take cuda:0).
run cpu_beside_both cpu ZEROLORA_EMULATED_GPUS=2 ZEROLORA_EMULATED_GPU_CAPABILITY=7.5,9.0
[ "$rc" = 0 ] || fail cpu_beside_both "the CPU run failed beside two GPUs"
grep -qF "though 1 GPU is visible: --device cuda:1 trains there (cuda:0 cannot: compute capability 7.5" \
  "$work/cpu_beside_both.log" || fail cpu_beside_both "the fit GPU not offered by its number"
# `zerolora env` names each GPU, its capability and whether it trains, and the libraries.
ZEROLORA_EMULATED_GPUS=2 ZEROLORA_EMULATED_GPU_CAPABILITY=7.5,9.0 "$emulated" env > "$work/env.log" 2>&1
rc=$?
[ "$rc" = 0 ] || fail env "env exited $rc"
for text in "gpu cuda:0: " "compute capability 7.5, 16.0 GiB: cannot train here: compute capability 7.5" \
  "--device cuda:1 trains here" "cuBLASLt:        13.0.0 (libcublasLt.so.13)" "NCCL:            2." \
  "cuDNN:           no: not used by this build" "cuda backend:    architectures "; do
  grep -qF -- "$text" "$work/env.log" || fail env "env: no '$text'"
done
CUDA_VISIBLE_DEVICES= "$emulated" env > "$work/env_hidden.log" 2>&1 || fail env_hidden "env failed"
grep -qF "gpus:            no CUDA device" "$work/env_hidden.log" || fail env_hidden "env: no GPU, not said"
echo "PASS: GPUs below 8.0 and builds without their kernels refused, named; 8.6 trains; env reports them"
