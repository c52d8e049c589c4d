"""What issue 13's speed targets leave for everything but the GEMMs and attention, by arithmetic
on a GPU run's measured figures.

  python3 bench/py/target_budget.py [--results results.txt]

The targets: the Llama-2-7B-shaped benchmark (4 x 2048 tokens, LoRA r 4 on q/k/v/o, full
recompute) at MFU >= 0.45 of 989 TFLOP/s and at 1.5x the tokens/s of Transformers + PEFT on the
same GPU; the seed's job (Llama-2-70B, 148 steps of 10 x 2048 tokens per GPU on 8 GPUs, as
bench/py/seed_job.py projects it from a 4-layer stack of its layer shape) under 30 minutes.

From a run's step time and its profile's matmul and attention shares (scripts/gpu-check.sh's
results.txt; without one, the H200 run of 2026-12-04, BENCHMARKS.md), each recompute level's
GEMM time is the measured one scaled by the GEMM work the level executes, and its attention time
the measured one scaled by its passes (the forward, its recompute where the level recomputes it,
and the backward at --attention_backward_over_forward forwards' time). Prints key=value lines:
the step each target allows, what GEMMs and attention take at each level, what that leaves for
everything else (LoRA, conversions, norms, RoPE, SwiGLU, loss, AdamW, idle), and the target's
bound were everything else free. Arithmetic on measured rates, not a measurement. Exits 77
where --results lacks a figure it needs.
"""
import argparse
import sys

import seed_job

# The 2026-12-04 H200 run (BENCHMARKS.md, "On an H200: the first GPU runs"): run 2's figures.
MEASURED_2026_12_04 = {
    "seq2048_tokens_per_s": 8446, "seq2048_share_matmul": 0.409, "seq2048_share_attention": 0.125,
    "torch_7b_tokens_per_s": 8970, "layers70b_seq2048_tokens_per_s": 22624,
    "layers70b_seq2048_share_matmul": 0.600, "layers70b_seq2048_share_attention": 0.069,
}
# Figures a results.txt may hold, read where it does (the runs of 2026-12-04 lack them).
OPTIONAL = ("layers70b_seq2048_once_per_step_s",)
SHAPES = {  # hidden, intermediate, heads x head_dim, KV heads x head_dim, layers, vocab
    "7b": (4096, 11008, 4096, 4096, 32, 32000),
    "70b_stack": (8192, 28672, 8192, 1024, 4, 32000),
}
LEVELS = ("full", "attention", "attention_mlp", "selective", "none")


def gemm_multiply_adds_per_token(shape, level, layers=None):
    """Per token: every layer's forward and backward-data GEMMs (the base weights are frozen: no
    weight gradients), what the level recomputes, and the lm_head's forward and backward (model/
    recompute_plan.hpp says what each level keeps; LoRA's rank-4 products are left out)."""
    d, i, q, kv, shape_layers, vocab = shape
    layers = layers or shape_layers
    attention_block, gate_up, down = 2 * d * q + 2 * d * kv, 2 * d * i, d * i
    layer = attention_block + gate_up + down
    # Recompute stops at what backward reads: never the down projection, whose output only
    # joins the residual stream.
    recomputed = {"full": layer - down, "attention": layer - down,
                  "attention_mlp": attention_block, "selective": gate_up, "none": 0}[level]
    return layers * (2 * layer + recomputed) + 2 * vocab * d


def model_flops_per_token(shape, seq, rank=4):
    """src/model/flops.hpp's count: 4N, LoRA's 6 r (in + out) per adapted matrix, attention."""
    d, i, q, kv, layers, vocab = shape
    n = layers * (2 * d * q + 2 * d * kv + 3 * d * i) + vocab * d
    lora = layers * 6 * rank * ((d + q) + 2 * (d + kv) + (q + d))
    return 4 * n + lora + 6 * seq * q * layers


def level_seconds(shape, matmul_s, attention_s, level, backward_over_forward, layers=None):
    """GEMM and attention seconds at `level` for `layers` of the shape (default: its own count),
    from those measured on the shape at full recompute."""
    layers = layers or shape[4]
    gemm = matmul_s * gemm_multiply_adds_per_token(shape, level, layers) / \
        gemm_multiply_adds_per_token(shape, "full")
    passes = lambda recomputes: 1 + recomputes + backward_over_forward
    return gemm, attention_s * layers / shape[4] * passes(level == "full") / passes(True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", help="scripts/gpu-check.sh's results.txt (default: the "
                        "H200 figures of 2026-12-04)")
    parser.add_argument("--attention_backward_over_forward", type=float, default=2.5,
                        help="attention backward's time in forwards (FlashAttention's FLOP "
                        "ratio; NVIDIA's published cuDNN rates on an H200 give 3.2)")
    args = parser.parse_args()
    kv = dict(MEASURED_2026_12_04)
    if args.results:
        with open(args.results) as f:
            found = {k: float(v) for k, v in (l.strip().split("=", 1) for l in f if "=" in l)
                     if k in MEASURED_2026_12_04 or k in OPTIONAL}
        missing = sorted(set(MEASURED_2026_12_04) - set(found))
        if missing:  # never mix one run's figures with another's; 77: gpu-check.sh's skip
            print(f"{args.results} lacks {', '.join(missing)} (the stages bench_7b, torch_7b "
                  "and bench_70b_layers write them)", file=sys.stderr)
            sys.exit(77)
        kv = found
    out = lambda key, value: print(f"{key}={value:.3f}" if isinstance(value, float) else
                                   f"{key}={value}")

    # The 7B benchmark: 4 x 2048 tokens a step.
    tokens, seq, shape = 4 * 2048, 2048, SHAPES["7b"]
    step = tokens / kv["seq2048_tokens_per_s"]
    matmul_s, attention_s = step * kv["seq2048_share_matmul"], step * kv["seq2048_share_attention"]
    flops = tokens * model_flops_per_token(shape, seq)
    allowed = {"mfu_0.45": flops / (0.45 * 989e12),
               "torch_1.5x": tokens / (1.5 * kv["torch_7b_tokens_per_s"])}
    out("7b_step_seconds_measured", step)
    out("7b_rest_seconds_measured", step - matmul_s - attention_s)
    for target, seconds in allowed.items():
        out(f"7b_step_seconds_allowed_{target}", seconds)
    for level in ("full", "none"):
        gemm, attention = level_seconds(shape, matmul_s, attention_s, level,
                                        args.attention_backward_over_forward)
        out(f"7b_{level}_gemm_seconds", gemm)
        out(f"7b_{level}_attention_seconds", attention)
        out(f"7b_{level}_mfu_bound", flops / (gemm + attention) / 989e12)
        for target, seconds in allowed.items():
            out(f"7b_{level}_rest_seconds_allowed_{target}", seconds - gemm - attention)

    # The seed's job projected as seed_job.py does for gpu-check.sh: 80 layers from the stack's
    # step less its once-per-step work (embedding, final norm, lm_head, loss), plus that work
    # once, each layer's ZeRO-3 gathers where they exceed its compute (at the measured rates they
    # do not). The runs of 2026-12-04 did not time it apart: their projection takes 20 lm_heads,
    # about 5% of the GEMM time too much.
    stack_step = seed_job.stack_step_seconds(kv["layers70b_seq2048_tokens_per_s"])
    once = kv.get("layers70b_seq2048_once_per_step_s", 0.0)
    matmul_s = stack_step * kv["layers70b_seq2048_share_matmul"]
    attention_s = stack_step * kv["layers70b_seq2048_share_attention"]
    minutes = seed_job.minutes
    out("seed_job_minutes_projected",
        minutes(seed_job.step_seconds([(seed_job.MODEL_LAYERS, stack_step, once)])))
    for level in LEVELS:
        gemm, attention = level_seconds(SHAPES["70b_stack"], matmul_s, attention_s, level,
                                        args.attention_backward_over_forward,
                                        layers=seed_job.MODEL_LAYERS)
        out(f"seed_job_{level}_gemm_minutes", minutes(gemm))
        out(f"seed_job_{level}_gemm_attention_minutes", minutes(gemm + attention))
        out(f"seed_job_{level}_rest_minutes_allowed_30_min",
            seed_job.TARGET_MINUTES - minutes(gemm + attention))


if __name__ == "__main__":
    main()
