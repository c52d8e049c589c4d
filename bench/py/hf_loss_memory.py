"""What Transformers' causal-LM loss holds in memory, per logit, on top of what was there before:
the figure behind `zerolora train --recompute_granularity auto`'s default budget
(src/model/recompute_plan.hpp).

  python3 bench/py/hf_loss_memory.py [--rows 512,1024,2048,4096] [--vocab 32000]

For each row count M, in a fresh process: bf16 hidden states [M, 4096] and an lm_head [V, 4096]
(made in bf16, no fp32 temporaries), the lm_head under CPU autocast, then Transformers'
ForCausalLMLoss (the loss LlamaForCausalLM computes when given labels) and its backward, as a
checkpointed training step runs them. Prints the growth of the process's peak RSS after the
forward and after the backward, divided by M x V, as key=value lines. Expected: ~10 bytes after
the forward (bf16 logits, their fp32 copy, the fp32 log-softmax kept for backward) and ~12 after
the backward (the log-softmax, its gradient and the gradient of its input, together).
"""
import argparse
import resource
import subprocess
import sys


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(rows, vocab, hidden_size):
    import torch
    from transformers.loss.loss_utils import ForCausalLMLoss

    torch.set_num_threads(2)
    hidden = torch.empty(1, rows, hidden_size, dtype=torch.bfloat16).normal_().requires_grad_()
    weight = torch.empty(vocab, hidden_size, dtype=torch.bfloat16).normal_(0, 0.01)
    labels = torch.randint(0, vocab, (1, rows))
    before = peak_rss_mib()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = torch.nn.functional.linear(hidden, weight)
    loss = ForCausalLMLoss(logits, labels, vocab_size=vocab)
    del logits  # as `model(...).loss`: the output object (and its logits) is not kept
    after_forward = peak_rss_mib()
    loss.backward()
    after_backward = peak_rss_mib()
    n = rows * vocab
    print(f"rows{rows}_logits={n}")
    print(f"rows{rows}_forward_peak_bytes_per_logit={(after_forward - before) * 1048576 / n:.2f}")
    print(f"rows{rows}_step_peak_bytes_per_logit={(after_backward - before) * 1048576 / n:.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="512,1024,2048,4096")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one measurement in this process
    args = p.parse_args()
    if args.one:
        measure(args.one, args.vocab, args.hidden)
        return
    for rows in args.rows.split(","):
        # A fresh process each time: the peak RSS only grows.
        subprocess.run([sys.executable, __file__, "--one", rows, "--vocab", str(args.vocab),
                        "--hidden", str(args.hidden)], check=True)


if __name__ == "__main__":
    main()
