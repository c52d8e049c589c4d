"""bench/py/seed_job.py, the seed job's projection that scripts/gpu-check.sh runs, against the
figures it rests on.

  python3 tests/seed_job_test.py bench/py/seed_job.py

- 148 steps: 2 epochs of 5,883 packed sequences at 8 GPUs x 10.
- The H200 run of 2026-12-04 (a 4-layer stack at 22,624 tokens/s, no once-per-step figure)
  projected 44.7 minutes (BENCHMARKS.md).
- The stack's once-per-step work counts once; each part's layers at its own stack's rate; a
  layer faster than its gathers takes the gathers' time; the parts must cover the 80 layers and
  name bench outputs with a rate (exit 2, never the 1 of a projection over the target).
- Exit 0 under 30 minutes, 1 at or over; the projection appended to --results.
"""
import os
import subprocess
import sys
import tempfile

from script_checks import Checks, load

tool = sys.argv[1]
seed_job = load(tool, "seed_job")
check = Checks()

check(seed_job.STEPS == 148, f"148 steps ({seed_job.STEPS})")
check(abs(seed_job.GATHER_SECONDS_PER_LAYER - 2 * 1.71e9 * 7 / 8 / 360e9) < 1e-12,
      f"two 1.71 GB gathers a layer at 360 GB/s bus bandwidth "
      f"({seed_job.GATHER_SECONDS_PER_LAYER:.4f} s)")

with tempfile.TemporaryDirectory() as folder:
    def bench(name, **kv):
        path = os.path.join(folder, name)
        with open(path, "w") as f:
            f.writelines(f"{k}={v}\n" for k, v in kv.items())
        return path

    results = os.path.join(folder, "results.txt")

    def run(*args):
        open(results, "w").close()
        done = subprocess.run([sys.executable, tool, "--results", results, *args],
                              capture_output=True, text=True)
        out = dict(l.split("=", 1) for l in done.stdout.splitlines() if "=" in l)
        with open(results) as f:
            appended = dict(l.strip().split("=", 1) for l in f if "=" in l)
        return done.returncode, out, appended, done.stdout + done.stderr

    run_2026_12_04 = bench("full.txt", recompute="full", seq2048_tokens_per_s=22624)
    rc, out, appended, text = run("seed_job", f"80:{run_2026_12_04}")
    check(rc == 1 and out.get("seed_job_projected_minutes") == "44.7" and
          appended.get("seed_job_projected_minutes") == "44.7" and "errs high" in text,
          f"the 2026-12-04 run: 44.7 minutes, over the target, its lm_head counted 20 times "
          f"(rc {rc}, {out.get('seed_job_projected_minutes')})")

    timed = bench("timed.txt", recompute="full", seq2048_tokens_per_s=22624,
                  seq2048_once_per_step_s=0.035)
    stack = 10 * 2048 / 22624
    expected = 148 * (20 * (stack - 0.035) + 0.035) / 60
    rc, out, _, _ = run("seed_job", f"80:{timed}")
    check(abs(float(out.get("seed_job_step_seconds", "nan")) - (20 * (stack - 0.035) + 0.035))
          < 0.005, f"the once-per-step work once ({out.get('seed_job_step_seconds')} s a step)")
    check(out.get("seed_job_projected_minutes") == f"{expected:.1f}",
          f"{expected:.1f} minutes ({out.get('seed_job_projected_minutes')})")

    faster = bench("faster.txt", recompute="attention", seq2048_tokens_per_s=23800,
                   seq2048_once_per_step_s=0.035)
    mixed = seed_job.step_seconds([(15, 10 * 2048 / 23800, 0.035), (65, stack, 0.035)])
    by_hand = 15 * (10 * 2048 / 23800 - 0.035) / 4 + 65 * (stack - 0.035) / 4 + 0.035
    check(abs(mixed - by_hand) < 1e-9, f"each part's layers at its stack's rate ({mixed:.4f} s)")
    rc, out, _, _ = run("seed_job_auto", f"15:{faster}", f"65:{timed}")
    check(out.get("seed_job_auto_step_seconds") == f"{mixed:.2f}",
          f"the command line takes the parts ({out.get('seed_job_auto_step_seconds')} s)")

    # A stack 200 times as fast: layers of 1.1 ms, under their gathers' 8.3 ms.
    quick = bench("quick.txt", recompute="full", seq2048_tokens_per_s=22624 * 200,
                  seq2048_once_per_step_s=0.0)
    rc, out, appended, _ = run("seed_job", f"80:{quick}")
    gathers = 148 * 80 * seed_job.GATHER_SECONDS_PER_LAYER / 60
    check(rc == 0 and out.get("seed_job_projected_minutes") == f"{gathers:.1f}",
          f"layers faster than their gathers take the gathers' time, under 30 minutes: exit 0 "
          f"(rc {rc}, {out.get('seed_job_projected_minutes')} minutes)")

    rc, _, _, text = run("seed_job", f"60:{timed}")
    check(rc == 2 and "not 80" in text, f"parts short of 80 layers refused (rc {rc})")
    no_rate = bench("no_rate.txt", recompute="full")
    rc, _, _, text = run("seed_job", f"80:{no_rate}")
    check(rc == 2 and "seq2048_tokens_per_s" in text,
          f"a bench output without tokens/s refused, not taken for over 30 minutes (rc {rc})")

check.exit()
