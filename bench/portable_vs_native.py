"""The portable default build against a -march=native build of the same source, side by side in
one run: job (a) (bench_train_step, Llama-2-7B-shaped 2 layers, seq 512, full recompute) and
job (b) (bench_small_model, stories260K, 4 x up to 256 tokens). Runs alternate native /
portable so that drift of the machine hits both alike; prints key=value lines (medians) and the
ratios portable / native.

  python3 bench/portable_vs_native.py [--portable build] [--native build-native] [--rounds 3]

The native build is configured and built (benchmarks only) when --native holds none.
Python standard library only.
"""
import argparse
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kv(output):
    values = {}
    for line in output.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def run(command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return kv(result.stdout)


def ensure_native(build):
    targets = ["bench_small_model", "bench_train_step"]
    if all(os.path.exists(os.path.join(build, "bench", t)) for t in targets):
        return
    subprocess.run(["cmake", "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DZEROLORA_NATIVE=ON",
                    "-DZEROLORA_BUILD_TESTS=OFF"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", build, "-j", str(os.cpu_count() or 2), "--target", *targets], check=True,
                   stdout=subprocess.DEVNULL)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--portable", default=os.path.join(ROOT, "build"))
    p.add_argument("--native", default=os.path.join(ROOT, "build-native"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", default="2")
    args = p.parse_args()
    ensure_native(args.native)
    jobs = {
        "a_seq512_tokens_per_s": (["bench_train_step", "--seq", "512", "--threads", args.threads], "seq512_tokens_per_s"),
        "b_stories260k_tokens_per_s": (["bench_small_model", "--steps", "40", "--threads", args.threads], "tokens_per_s"),
    }
    results = {(job, build): [] for job in jobs for build in ("native", "portable")}
    for round_index in range(args.rounds):
        for job, (command, key) in jobs.items():
            for build, folder in (("native", args.native), ("portable", args.portable)):
                values = run([os.path.join(folder, "bench", command[0]), *command[1:]])
                results[(job, build)].append(float(values[key]))
                print(f"round{round_index}_{build}_{job}={values[key]}", flush=True)
    for job in jobs:
        native = statistics.median(results[(job, "native")])
        portable = statistics.median(results[(job, "portable")])
        print(f"native_{job}={native:.6g}")
        print(f"portable_{job}={portable:.6g}")
        print(f"ratio_portable_over_native_{job}={portable / native:.4f}")


if __name__ == "__main__":
    main()
