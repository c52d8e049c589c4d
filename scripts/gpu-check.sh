#!/usr/bin/env bash
# The GPU check: run on the lent device machine (one H200) by the device tool, in the
# repository root, with gpu-pack/ carried (scripts/gpu-pack.sh makes it here):
#   run(command="bash scripts/gpu-check.sh", carry=["gpu-pack"], timeout_s=480)
# Every stage runs under its own timeout, so a hang costs one stage; everything is logged under
# $OUT (log.txt, the gtest XML, the training runs' metrics, results.txt with key=value lines and
# a PASS/FAIL/SKIP table last). Nothing here is estimated: a stage reports only what ran.
set -uo pipefail
OUT="${OUT:-/tmp/gpu-check-out}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
root="$(cd "$(dirname "$0")/.." && pwd)"
pack="$root/gpu-pack"
results="$OUT/results.txt"
: > "$results"
declare -a table
stage() {  # stage NAME SECONDS COMMAND...: runs, records PASS/FAIL(rc)/TIMEOUT
  local name="$1" limit="$2"
  shift 2
  echo "=== $name (limit ${limit}s) $(date -u +%T)"
  local start=$SECONDS
  # Through bash -c, so that a stage may be one of this script's (exported) functions.
  timeout -k 5 "$limit" bash -c '"$@"' "$name" "$@"
  local rc=$?
  local verdict=PASS
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && verdict=TIMEOUT
  [ $rc -ne 0 ] && [ "$verdict" = PASS ] && verdict="FAIL($rc)"
  [ $rc -eq 77 ] && verdict=SKIP
  echo "stage_${name}_seconds=$((SECONDS - start))" >> "$results"
  echo "stage_${name}=$verdict" >> "$results"
  table+=("$(printf '%-22s %s' "$name" "$verdict")")
}

[ -x "$pack/bin/zerolora_cuda_tests" ] && [ -f "$pack/lib.tar.xz" ] || { echo "gpu-check: $pack is missing: run scripts/gpu-pack.sh here and carry gpu-pack"; exit 1; }

# The libraries the pack brings (xz-compressed to fit the carry limit), unpacked outside the tree.
unpacked="$(mktemp -d)"
tar -C "$unpacked" -xJf "$pack/lib.tar.xz"
# The device's CUDA libraries: its Python's nvidia/* wheels (exactly one cuDNN on the path).
python="$(command -v /opt/torch/.venv/bin/python3 || command -v python3)"
nvidia="$("$python" -c 'import nvidia, os; print(list(nvidia.__path__)[0])' 2> /dev/null)"
libs="$unpacked/lib"
if [ -n "$nvidia" ]; then
  for dir in "$nvidia"/*/lib; do libs="$libs:$dir"; done
fi
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ZEROLORA_REPO_DIR="$root" NVIDIA_TF32_OVERRIDE=0
export OUT root pack python results

environment() {
  uname -a
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
  "$python" -c 'import torch; print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version(), "nccl", torch.cuda.nccl.version())'
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  local missing=0
  for binary in "$pack"/bin/*; do
    if ldd "$binary" | grep "not found"; then missing=1; fi
  done
  return $missing
}
export -f environment
stage environment 60 environment

stage cuda_tests 240 "$pack/bin/zerolora_cuda_tests" --gtest_output="xml:$OUT/cuda_tests.xml"
stage seam_tests 120 "$pack/bin/zerolora_unit_tests" --gtest_filter='DeviceSeam.*:CachingAllocator.*'

# The seed recipe's LoRA settings on stories260K for 50 steps, on the GPU and on this machine's
# CPU: every step's loss within the bf16 tolerance, the same dropout masks by construction.
train() {  # train DEVICE DIR
  "$pack/bin/zerolora" train --device "$1" --model_name_or_path "$root/demo/stories260K-hf" \
    --train_file "$root/demo/instructions.json" --output_dir "$2" --overwrite_output_dir \
    --bf16 true --max_steps 50 --per_device_train_batch_size 10 --max_seq_length 512 \
    --dataset_concatenation --learning_rate 0.0018 --warmup_ratio 0.03 \
    --lr_scheduler_type cosine --lora_rank 4 --lora_alpha 16 --lora_dropout 0.05 \
    --lora_target_modules q_proj k_proj v_proj o_proj --logging_steps 1 --save_strategy no \
    --threads 8
}
compare_losses() {
  "$python" - "$OUT/train_cpu/metrics.jsonl" "$OUT/train_gpu/metrics.jsonl" <<'PY'
import json, sys
def losses(path):
    return [r["loss"] for r in map(json.loads, open(path)) if "loss" in r and "eval_loss" not in r]
cpu, gpu = losses(sys.argv[1]), losses(sys.argv[2])
worst = max(abs(a - b) / abs(a) for a, b in zip(cpu, gpu))
print(f"steps cpu={len(cpu)} gpu={len(gpu)} worst_relative_loss_difference={worst:.3e}")
with open(sys.argv[1].rsplit("/", 2)[0] + "/results.txt", "a") as f:
    f.write(f"stories260k_50_steps_worst_loss_rel={worst:.3e}\n")
sys.exit(0 if len(cpu) == len(gpu) == 50 and worst <= 4e-4 else 1)
PY
}
export -f train compare_losses
stage train_gpu 120 train cuda "$OUT/train_gpu"
stage train_cpu 120 train cpu "$OUT/train_cpu"
stage losses_match 30 compare_losses

# The benchmark: the seed recipe's LoRA on a Llama-2-7B-shaped model (32 layers, random bf16
# weights), packed 2048-token sequences, micro-batch 4 x 2048 = 8192 tokens, full recompute;
# side by side with Transformers + PEFT (SDPA, gradient checkpointing, AdamW) on the same GPU;
# then 4 layers of Llama-2-70B's shape at the seed's batch 10 x 2048 (tokens/s per layer).
stage bench_7b 150 "$pack/bin/bench_train_step" --device cuda --layers 32 --seq 2048 --batch 4 \
  --steps 3 --threads 16
grep -h "=" "$OUT/log.txt" | grep -E "^(seq2048_|gemm_bf16|device=|model=)" >> "$results"
torch_7b() {
  set -o pipefail
  "$python" "$root/bench/py/torch_lora_step.py" --job a --device cuda --layers 32 --seq 2048 \
    --batch 4 --steps 3 --prefix torch_7b | tee -a "$results"
}
export -f torch_7b
stage torch_7b 150 torch_7b
stage bench_70b_layers 120 "$pack/bin/bench_train_step" --device cuda --shape 70b --layers 4 \
  --seq 2048 --batch 10 --steps 2 --threads 16

echo
echo "=== summary"
printf '%s\n' "${table[@]}" | tee -a "$results"
