#!/usr/bin/env bash
# The real executable under launchers: Open MPI's mpirun for real, the others simulated by
# their environment variables. A launcher whose job this MPI cannot join (every process comes
# up alone) is refused before anything is written; a Slurm batch shell trains as one process.
# Usage: launch_test.sh ZEROLORA MPIRUN DEMO_DIR
set -uo pipefail
bin="$1"
mpirun="$2 --allow-run-as-root --oversubscribe --bind-to none"
model="$3/stories260K-hf"
data="$3/instructions.json"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
source "$(dirname "$0")/check.sh"
train() {  # train OUTPUT_DIR: two steps on the demo model
  "$bin" train --model_name_or_path "$model" --train_file "$data" --output_dir "$1" --max_steps 2 \
    --per_device_train_batch_size 2 --max_seq_length 192 --lora_rank 4 --save_strategy no --threads 1
}

$mpirun -np 2 "$bin" train --model_name_or_path "$model" --train_file "$data" --output_dir "$work/mpirun" \
  --max_steps 2 --per_device_train_batch_size 2 --max_seq_length 192 --lora_rank 4 --save_strategy no \
  --threads 1 > "$work/mpirun.log" 2>&1
[ $? -eq 0 ] && grep -Eq '"world_size": ?2' "$work/mpirun/train_results.json"
check "Open MPI mpirun -np 2: two ranks train together" $?

for launcher in "MPICH / Intel MPI mpiexec (Hydra)|PMI_RANK=1 PMI_SIZE=2 MPI_LOCALNRANKS=2 MPI_LOCALRANKID=1" \
                "Slurm srun|SLURM_STEP_NUM_TASKS=2 SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_GTIDS=0,1"; do
  name="${launcher%%|*}"
  env ${launcher#*|} "$bin" train --model_name_or_path "$model" --train_file "$data" \
    --output_dir "$work/refused" --max_steps 2 > "$work/refused.log" 2>&1
  code=$?
  [ $code -eq 1 ] && grep -q "started by $name as rank" "$work/refused.log" &&
    grep -q "but MPI came up as rank 0 of 1" "$work/refused.log" && [ ! -e "$work/refused" ]
  check "$name simulated: refused (exit $code), nothing written" $? || sed 's/^/  /' "$work/refused.log"
done

env TORCHELASTIC_RUN_ID=x WORLD_SIZE=2 RANK=0 "$bin" train --model_name_or_path "$model" \
  --train_file "$data" --output_dir "$work/torchrun" > "$work/torchrun.log" 2>&1
[ $? -eq 1 ] && grep -q "started by torchrun as rank 0 of 2" "$work/torchrun.log" && [ ! -e "$work/torchrun" ]
check "torchrun with 2 processes: refused, nothing written" $?

env SLURM_NTASKS=4 SLURM_PROCID=0 SLURM_JOB_ID=1 bash -c "$(declare -f train); bin='$bin' model='$model' data='$data' train '$work/batch'" \
  > "$work/batch.log" 2>&1
[ $? -eq 0 ] && grep -q "not started by srun or mpirun: training as one process" "$work/batch.log" &&
  grep -Eq '"world_size": ?1' "$work/batch/train_results.json"
check "a Slurm batch shell: trains as one process, with a note" $?

exit $((failures > 0))
