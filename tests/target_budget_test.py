"""bench/py/target_budget.py against what its arithmetic rests on.

  python3 tests/target_budget_test.py bench/py/target_budget.py

- Its model FLOPs are src/model/flops.hpp's: the H200 run of 2026-12-04 printed MFU 0.240 of
  989 TFLOP/s at 8,446 tokens/s for the 7B benchmark (BENCHMARKS.md).
- Its GEMM work per level is model/recompute_plan.hpp's: full recompute executes 2.78 forwards'
  worth of the layers' GEMMs (the down projection is not recomputed) where none executes 2.
- Its seed-job projection at full recompute is seed_job.py's, as gpu-check.sh ran it (44.7
  minutes then), and counts the stack's once-per-step work once where the run timed it apart.
- A results.txt with that run's figures gives its default output; one lacking a figure skips
  (exit 77), never mixing one run's figures with another's.
"""
import os
import subprocess
import sys
import tempfile

from script_checks import Checks, load

tool = sys.argv[1]
budget = load(tool, "target_budget")
check = Checks()

def run(*args):
    done = subprocess.run([sys.executable, tool, *args], capture_output=True, text=True)
    return done.returncode, done.stdout, done.stderr


shape_7b = budget.SHAPES["7b"]
mfu = budget.model_flops_per_token(shape_7b, 2048) * 8446 / 989e12
check(abs(mfu - 0.240) < 0.0006, f"7B model FLOPs give the run's MFU 0.240 ({mfu:.4f})")
d, i, q, kv, layers, vocab = shape_7b
lm_head = 2 * vocab * d
full = budget.gemm_multiply_adds_per_token(shape_7b, "full") - lm_head
none = budget.gemm_multiply_adds_per_token(shape_7b, "none") - lm_head
check(abs(2 * full / none - 2.78) < 0.005, f"7B layers: full recompute {2 * full / none:.3f} "
      "forwards' worth of GEMMs, none 2")
levels = [budget.gemm_multiply_adds_per_token(shape_7b, level) for level in budget.LEVELS]
check(levels[0] == levels[1] and levels[4] < min(levels[2:4]) and max(levels[2:4]) < levels[0],
      "attention recomputes full's GEMMs, attention_mlp and selective fewer, none none")

rc, out, err = run()
kv_out = dict(line.split("=", 1) for line in out.split())
check(rc == 0, f"runs on its defaults (rc {rc}) {err.strip()}")
check(kv_out.get("seed_job_minutes_projected") == "44.658", "the seed job projects to gpu-check's "
      f"44.7 minutes ({kv_out.get('seed_job_minutes_projected')})")
check(float(kv_out.get("7b_full_gemm_seconds", "nan")) == round(8192 / 8446 * 0.409, 3),
      "full recompute's GEMM time is the run's matmul share of its step")
allowed = float(kv_out["7b_step_seconds_allowed_mfu_0.45"])
spent = float(kv_out["7b_none_gemm_seconds"]) + float(kv_out["7b_none_attention_seconds"])
check(abs(float(kv_out["7b_none_rest_seconds_allowed_mfu_0.45"]) - (allowed - spent)) <= 0.0015,
      "what is left is the step allowed less the GEMMs and attention")

with tempfile.TemporaryDirectory() as folder:
    results = os.path.join(folder, "results.txt")
    with open(results, "w") as f:
        f.write("stage_bench_7b=PASS\n")
        f.writelines(f"{k}={v}\n" for k, v in budget.MEASURED_2026_12_04.items())
    rc, same, _ = run("--results", results)
    check(rc == 0 and same == out, "a results.txt with the run's figures gives the same output")
    # A run that timed the stack's once-per-step work: 20 stacks' layers and one lm_head.
    with open(results, "a") as f:
        f.write("layers70b_seq2048_once_per_step_s=0.035\n")
    rc, once_out, _ = run("--results", results)
    projected = dict(line.split("=", 1) for line in once_out.split())["seed_job_minutes_projected"]
    stack = 10 * 2048 / budget.MEASURED_2026_12_04["layers70b_seq2048_tokens_per_s"]
    expected = 148 * (20 * (stack - 0.035) + 0.035) / 60
    check(rc == 0 and abs(float(projected) - expected) < 0.001 and float(projected) < 43.1,
          f"the once-per-step work counts once ({projected} minutes, {expected:.3f} expected)")
    with open(results, "w") as f:
        f.writelines(f"{k}={v}\n" for k, v in budget.MEASURED_2026_12_04.items()
                     if k != "torch_7b_tokens_per_s")
    rc, _, err = run("--results", results)
    check(rc == 77 and "torch_7b_tokens_per_s" in err, f"a missing figure skips, named (rc {rc})")

check.exit()
