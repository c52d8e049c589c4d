#!/usr/bin/env python3
"""cuDNN's deterministic attention backward: the dP workspace of one call over a micro-batch
against the calls over groups of segments (src/ops/attention.hpp, cudnn_backward_groups), on a
packed data set as `zerolora data-preview` writes it (JSON Lines with each row's segments).

    ./build/zerolora data-preview --train_file DATA.json --tokenizer TOKENIZER \\
        --max_seq_length 2048 --packing boundaries --num_examples 100000 --output rows.jsonl
    python3 bench/py/cudnn_dp_workspace.py rows.jsonl

The functions below mirror cudnn_size_bucket, cudnn_slot_count, cudnn_dp_budget,
cudnn_backward_groups and cudnn_dp_budget_bound of src/ops/attention.hpp (BENCHMARKS.md).
"""
import json
import sys


def size_bucket(n):
    octave = 128
    while octave * 2 <= n:
        octave *= 2
    step = max(octave // 4, 128)
    return 128 if n <= 128 else (n + step - 1) // step * step


def slot_count(segments):
    slots = 8
    while slots < segments:
        slots *= 2
    return slots


def dp_budget(tokens, longest):
    s, cut = size_bucket(longest), max(longest, 128)
    return slot_count((tokens + cut - 1) // cut) * s * s


def call_cost(lengths):  # slots x S^2 of one call over these segments
    return slot_count(len(lengths)) * size_bucket(max(lengths)) ** 2


def backward_groups(lengths, tokens):
    budget = dp_budget(tokens, max(lengths))
    groups, first, group_longest = [], 0, 0
    for i, length in enumerate(lengths):
        s = size_bucket(max(group_longest, length))
        if i > first and slot_count(i - first + 1) * s * s > budget:
            groups.append((first, i))
            first, group_longest = i, 0
        group_longest = max(group_longest, length)
    groups.append((first, len(lengths)))
    return groups


def main():
    rows = [[s[1] for s in json.loads(line)["segments"]] for line in open(sys.argv[1])]
    gib = 2.0**30
    for name, batch, heads, seq in (("7b", 4, 32, 2048), ("70b", 10, 64, 2048)):
        one, grouped, calls = [], [], []
        for i in range(0, len(rows) - batch + 1, batch):
            lengths = sum(rows[i : i + batch], [])
            groups = backward_groups(lengths, sum(lengths))
            one.append(call_cost(lengths) * heads * 2 / gib)
            grouped.append(max(call_cost(lengths[a:b]) for a, b in groups) * heads * 2 / gib)
            calls.append(len(groups))
        bound = max(dp_budget(batch * seq, n) for n in range(1, seq + 1)) * heads * 2 / gib
        n = len(one)
        print(f"{name}_batches={n}")
        print(f"{name}_one_call_max_gib={max(one):.2f}")
        print(f"{name}_one_call_mean_gib={sum(one) / n:.2f}")
        print(f"{name}_grouped_max_gib={max(grouped):.2f}")
        print(f"{name}_grouped_mean_gib={sum(grouped) / n:.2f}")
        print(f"{name}_calls_mean={sum(calls) / n:.1f}")
        print(f"{name}_calls_max={max(calls)}")
        print(f"{name}_estimate_bound_gib={bound:.2f}")


if __name__ == "__main__":
    main()
