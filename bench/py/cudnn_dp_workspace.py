#!/usr/bin/env python3
"""cuDNN's deterministic attention backward: the dP workspace of one call over a micro-batch
against the calls over groups of segments (cudnn_backward_groups) and, within them, of heads
under the cap (cudnn_kv_heads_per_call; src/ops/cudnn_plan.hpp), on a packed data set as
`zerolora data-preview` writes it (JSON Lines with each row's segments).

    ./build/zerolora data-preview --train_file DATA.json --tokenizer TOKENIZER \\
        --max_seq_length 2048 --packing boundaries --num_examples 100000 --output rows.jsonl
    python3 bench/py/cudnn_dp_workspace.py rows.jsonl

The functions below mirror cudnn_size_bucket, cudnn_slot_count, cudnn_dp_budget,
cudnn_backward_groups, cudnn_kv_heads_per_call and cudnn_dp_bytes_bound of
src/ops/cudnn_plan.hpp (BENCHMARKS.md), with the default cap of 1 GiB.
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
    if segments <= 1:
        return 1
    octave = 1
    while octave * 2 <= segments:
        octave *= 2
    if segments <= 8:
        return octave if octave == segments else 2 * octave
    step = octave // 4
    return (segments + step - 1) // step * step


def dp_budget(tokens, longest):
    s, cut = size_bucket(longest), max(longest, 128)
    return slot_count((tokens + cut - 1) // cut) * s * s


def call_cost(lengths):  # slots x S^2 of one call over these segments
    return slot_count(len(lengths)) * size_bucket(max(lengths)) ** 2


def backward_groups(lengths, tokens, heads, kv_heads):
    budget = dp_budget(tokens, max(lengths))
    fewest = fewest_query_heads(heads, kv_heads)
    groups, first, group_longest = [], 0, 0
    for i, length in enumerate(lengths):
        s = size_bucket(max(group_longest, length))
        cost = slot_count(i - first + 1) * s * s
        over = cost > budget or 2.0 * cost * fewest > max(CAP, 2.0 * s * s * fewest)
        if i > first and over:
            groups.append((first, i))
            first, group_longest = i, 0
        group_longest = max(group_longest, length)
    groups.append((first, len(lengths)))
    return groups


CAP = 2.0**30


def kv_heads_per_call(slots_s2, heads, kv_heads):
    for g in range(kv_heads, 1, -1):
        if kv_heads % g == 0 and 2.0 * slots_s2 * g * (heads // kv_heads) <= CAP:
            return g
    return 1


def fewest_query_heads(heads, kv_heads):
    return heads // kv_heads  # one KV head's


def capped_bound(tokens, seq, heads, kv_heads):
    fewest = fewest_query_heads(heads, kv_heads)
    return max(
        min(2.0 * dp_budget(tokens, n) * heads, max(CAP, 2.0 * size_bucket(n) ** 2 * fewest))
        for n in range(1, seq + 1)
    )


def main():
    rows = [[s[1] for s in json.loads(line)["segments"]] for line in open(sys.argv[1])]
    gib = 2.0**30
    for name, batch, heads, kv_heads, seq in (("7b", 4, 32, 32, 2048), ("70b", 10, 64, 8, 2048)):
        one, grouped, capped, calls = [], [], [], []
        for i in range(0, len(rows) - batch + 1, batch):
            lengths = sum(rows[i : i + batch], [])
            groups = backward_groups(lengths, sum(lengths), heads, kv_heads)
            one.append(call_cost(lengths) * heads * 2 / gib)
            grouped.append(max(call_cost(lengths[a:b]) for a, b in groups) * heads * 2 / gib)
            costs = [call_cost(lengths[a:b]) for a, b in groups]
            per_call = [(c, kv_heads_per_call(c, heads, kv_heads)) for c in costs]
            capped.append(max(c * g * (heads // kv_heads) * 2 / gib for c, g in per_call))
            calls.append(sum(kv_heads // g for _, g in per_call))
        bound = capped_bound(batch * seq, seq, heads, kv_heads) / gib
        n = len(one)
        print(f"{name}_batches={n}")
        print(f"{name}_one_call_max_gib={max(one):.2f}")
        print(f"{name}_one_call_mean_gib={sum(one) / n:.2f}")
        print(f"{name}_grouped_max_gib={max(grouped):.2f}")
        print(f"{name}_grouped_mean_gib={sum(grouped) / n:.2f}")
        print(f"{name}_capped_max_gib={max(capped):.2f}")
        print(f"{name}_capped_mean_gib={sum(capped) / n:.2f}")
        print(f"{name}_calls_mean={sum(calls) / n:.1f}")
        print(f"{name}_calls_max={max(calls)}")
        print(f"{name}_estimate_bound_gib={bound:.2f}")


if __name__ == "__main__":
    main()
