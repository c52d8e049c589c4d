"""The seed's job projected from 4-layer stacks of Llama-2-70B's layer shape: the one place this
arithmetic lives (scripts/gpu-check.sh's seed_job stages run it; target_budget.py imports it).

  python3 bench/py/seed_job.py --results results.txt NAME COUNT:BENCH [COUNT:BENCH...]

The seed's job: Llama-2-70B, LoRA r 4 on q/k/v/o, two epochs of Alpaca at 2048 tokens, ZeRO-3
over 8 GPUs at 10 x 2048 tokens per GPU. 52,002 Alpaca records at 231.7 tokens each with the
Llama-2 tokenizer and the Alpaca template (measured on the 999 public records: 231,424 tokens,
113 packed sequences of 2048; LLaMA-Factory's sample, whose records may be longer than
tatsu-lab's: the projection scales with the token count), packed: 5,883 sequences per epoch,
so 148 steps.

An 80-layer step is, for each COUNT:BENCH, COUNT layers timed by that 4-layer stack run
(bench_train_step's output: its step, less the work it does once per step, / 4 per layer), plus
what each layer's gathers take beyond its compute, plus the once-per-step work (embedding, final
norm, lm_head, loss: bench_train_step's once_per_step_s) once, as the 80-layer model runs it. A
bench output without that figure counts it in each stack and errs high. ZeRO-3's gathers: two
per layer per step (forward; backward with its recompute) of 1.71 GB in bf16, at 360 GB/s of
NCCL all-gather bus bandwidth (8 x H100 SXM NVLink-4: nccl-tests report 460-480 GB/s all-reduce
busbw; 450 GB/s per direction): only what exceeds the layer's compute adds (prefetch depth 1
overlaps one layer).

Prints key=value lines, appends the projection to --results, and exits 1 where it is not under
30 minutes (the target), 0 where it is, 2 where the parts are not COUNT:BENCH with bench outputs
holding tokens/s, or do not cover the 80 layers.
"""
import argparse
import sys

GPUS, BATCH, SEQ, EPOCHS, SEQUENCES_PER_EPOCH = 8, 10, 2048, 2, 5883
MODEL_LAYERS, STACK_LAYERS = 80, 4
STEPS = -(-EPOCHS * SEQUENCES_PER_EPOCH // (GPUS * BATCH))
GATHER_SECONDS_PER_LAYER = 2 * 1.71e9 * (GPUS - 1) / GPUS / 360e9
TARGET_MINUTES = 30


def stack_step_seconds(tokens_per_s):
    """One step of a stack run at the seed's batch, from its tokens/s."""
    return BATCH * SEQ / tokens_per_s


def layer_seconds(stack_step_s, once_per_step_s):
    """One layer's share of a stack's step, its once-per-step work taken out."""
    return (stack_step_s - once_per_step_s) / STACK_LAYERS


def once_per_step_seconds(parts):
    """The once-per-step work of parts of (layer count, stack step seconds, once-per-step
    seconds): their mean, each stack run having timed the same work."""
    return sum(once for _, _, once in parts) / len(parts)


def step_seconds(parts):
    """The 80-layer step from parts of (layer count, stack step seconds, once-per-step seconds):
    each part's layers with what their gathers add beyond them, and the once-per-step work once."""
    step = 0.0
    for count, stack_step_s, once_s in parts:
        layer = layer_seconds(stack_step_s, once_s)
        step += count * (layer + max(0.0, GATHER_SECONDS_PER_LAYER - layer))
    return step + once_per_step_seconds(parts)


def minutes(step_s):
    """The job's minutes at a step of step_s seconds."""
    return STEPS * step_s / 60


def read_bench(path):
    """A bench_train_step output's key=value lines."""
    with open(path) as f:
        return dict(line.strip().split("=", 1) for line in f if "=" in line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, help="the key=value file to append to")
    parser.add_argument("name", help="the keys' prefix (seed_job, seed_job_auto)")
    parser.add_argument("parts", nargs="+", metavar="COUNT:BENCH",
                        help="COUNT of the 80 layers timed by the stack run whose output is BENCH")
    args = parser.parse_args()
    parts = []
    for part in args.parts:
        count, _, bench = part.partition(":")
        try:
            kv = read_bench(bench)
            parts.append((int(count), stack_step_seconds(float(kv["seq2048_tokens_per_s"])),
                          float(kv.get("seq2048_once_per_step_s", 0.0))))
        except (OSError, KeyError, ValueError) as e:
            parser.error(f"{part}: not COUNT:BENCH with a bench output holding "
                         f"seq2048_tokens_per_s ({type(e).__name__}: {e})")
        if "seq2048_once_per_step_s" not in kv:
            print(f"{bench} has no once_per_step_s: its once-per-step work (lm_head) counted in "
                  f"each of the {MODEL_LAYERS // STACK_LAYERS} stacks (errs high)")
        print(f"{args.name}_layer_seconds_{kv.get('recompute', '?')}="
              f"{layer_seconds(*parts[-1][1:]):.3f} ({count} layers)")
    layers = sum(count for count, _, _ in parts)
    if layers != MODEL_LAYERS:
        parser.error(f"the parts' counts sum to {layers}, not {MODEL_LAYERS}")
    once_s = once_per_step_seconds(parts)
    step_80 = step_seconds(parts)
    projected = minutes(step_80)
    print(f"seed_70b_gather_seconds_per_layer={GATHER_SECONDS_PER_LAYER:.4f}")
    print(f"{args.name}_once_per_step_seconds={once_s:.4f}\n{args.name}_steps={STEPS}")
    print(f"{args.name}_step_seconds={step_80:.2f}\n{args.name}_projected_minutes={projected:.1f}")
    with open(args.results, "a") as f:
        f.write(f"{args.name}_projected_minutes={projected:.1f}\n"
                f"{args.name}_step_seconds={step_80:.2f}\n"
                f"{args.name}_once_per_step_seconds={once_s:.4f}\n")
    sys.exit(0 if projected < TARGET_MINUTES else 1)


if __name__ == "__main__":
    main()
