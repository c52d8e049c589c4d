"""The portable default build against a -march=native build of the same source, side by side in
one run: job (a) (bench_train_step, Llama-2-7B-shaped 2 layers, seq 512, full recompute) and
job (b) (bench_small_model, stories260K, 4 x up to 256 tokens). Each round runs native then
portable, so that the machine's drift between processes (up to +-15% on a shared VM) hits
both alike. Prints key=value lines: every run, each build's best (drift only ever slows a
run down, so the best is the least disturbed), the ratio of the bests, and the median of the
rounds' paired ratios portable / native.

  python3 bench/portable_vs_native.py [--portable build] [--native build-native]
                                      [--rounds-a 3] [--rounds-b 9]

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
    p.add_argument("--rounds-a", type=int, default=3, help="rounds of job (a), about 40 s each")
    p.add_argument("--rounds-b", type=int, default=9, help="rounds of job (b), about 8 s each")
    p.add_argument("--threads", default="2")
    args = p.parse_args()
    ensure_native(args.native)
    jobs = {
        "a_seq512_tokens_per_s": (["bench_train_step", "--seq", "512", "--threads", args.threads],
                                  "seq512_tokens_per_s", args.rounds_a),
        "b_stories260k_tokens_per_s": (["bench_small_model", "--steps", "40", "--threads", args.threads],
                                       "tokens_per_s", args.rounds_b),
    }
    for job, (command, key, rounds) in jobs.items():
        if rounds < 1:
            continue
        results = {"native": [], "portable": []}
        for round_index in range(rounds):
            for build, folder in (("native", args.native), ("portable", args.portable)):
                values = run([os.path.join(folder, "bench", command[0]), *command[1:]])
                results[build].append(float(values[key]))
                print(f"round{round_index}_{build}_{job}={values[key]}", flush=True)
        native, portable = max(results["native"]), max(results["portable"])
        paired = statistics.median(p / n for p, n in zip(results["portable"], results["native"]))
        print(f"best_native_{job}={native:.6g}")
        print(f"best_portable_{job}={portable:.6g}")
        print(f"ratio_of_bests_portable_over_native_{job}={portable / native:.4f}")
        print(f"median_paired_ratio_portable_over_native_{job}={paired:.4f}", flush=True)


if __name__ == "__main__":
    main()
