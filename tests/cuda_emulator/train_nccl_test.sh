#!/usr/bin/env bash
# `mpirun -np 2 zerolora train --device cuda --ddp_backend nccl` with ZeRO-3 (LoRA partitioned,
# a checkpoint saved mid-run), each rank on its own emulated GPU, gives the losses and the
# adapter of the same run on the CPU: the command line's whole GPU path, NCCL included.
# Usage: train_nccl_test.sh ZEROLORA MPIRUN PYTHON DEMO_DIR
set -uo pipefail
bin="$1" mpirun="$2 --allow-run-as-root --oversubscribe --bind-to none" python="$3" demo="$4"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/ds.json" << 'JSON'
{"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
 "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}
JSON
run() {  # run DEVICE BACKEND
  ZEROLORA_EMULATED_GPUS=2 timeout 300 $mpirun -np 2 "$bin" train --device "$1" --ddp_backend "$2" \
    --deepspeed "$work/ds.json" --model_name_or_path "$demo/stories260K-hf" \
    --train_file "$demo/instructions.json" --output_dir "$work/$1" --bf16 false --max_steps 4 \
    --per_device_train_batch_size 1 --max_seq_length 256 --lora_rank 4 --lora_dropout 0.05 \
    --logging_steps 1 --save_strategy steps --save_steps 2 --peak_tflops 1 --threads 1 \
    > "$work/$1.log" 2>&1 || { cat "$work/$1.log"; echo "FAIL: the $1 run"; exit 1; }
}
run cuda nccl
run cpu auto
grep -q "NCCL (asked for)" "$work/cuda.log" || { cat "$work/cuda.log"; echo "FAIL: not on NCCL"; exit 1; }
[ -d "$work/cuda/checkpoint-2" ] || { echo "FAIL: no checkpoint-2 from the GPU run"; exit 1; }
# Losses within 1e-5 and the adapter within 1e-4 (tests/tolerances.hpp, kWorldSize: AdamW
# amplifies the last digits); fp32 on both devices.
"$python" - "$work" << 'PY'
import json, sys
from safetensors.numpy import load_file
work = sys.argv[1]
def losses(run):
    return [r["loss"] for r in map(json.loads, open(f"{work}/{run}/metrics.jsonl")) if "loss" in r]
gpu, cpu = losses("cuda"), losses("cpu")
loss_rel = max(abs(a - b) / abs(b) for a, b in zip(gpu, cpu))
x, y = load_file(f"{work}/cuda/adapter_model.safetensors"), load_file(f"{work}/cpu/adapter_model.safetensors")
scale = max(float(abs(t).max()) for t in y.values())
adapter_rel = max(float(abs(x[k] - y[k]).max()) for k in y) / scale if x.keys() == y.keys() else float("inf")
print(f"losses {gpu} vs {cpu}: worst rel {loss_rel:.2e}; adapter max rel {adapter_rel:.2e}")
ok = len(gpu) == len(cpu) == 4 and loss_rel <= 1e-5 and adapter_rel <= 1e-4
print("ok" if ok else "FAIL: the GPU run differs from the CPU run")
sys.exit(0 if ok else 1)
PY
