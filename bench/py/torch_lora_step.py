"""PyTorch + Transformers + PEFT LoRA training steps on CPU: the side-by-side reference for
zerolora's benchmarks (bench/compare.py runs it). Prints key=value lines.

  python3 torch_lora_step.py --job a --seq 512 --precision bf16 --threads 2 --steps 3
  python3 torch_lora_step.py --job b [--model DIR] [--data FILE] --precision fp32 --threads 1
  python3 torch_lora_step.py --job a --device cuda --layers 32 --seq 2048 --batch 4   (a GPU)

Job a: a Llama-2-7B-shaped stack (hidden 4096, intermediate 11008, 32 heads, vocab 32000,
--layers layers, 2 by default), random weights, micro-batch --batch x seq, every token labelled.
Job b: stories260K-hf on alpaca_en_demo.json with the Alpaca template, prompt masked,
micro-batch 4 x up to 256 tokens, padded to the longest in the batch (HF's collator).
Both: LoRA r 4, alpha 16, dropout 0.05 on q, k, v, o (the seed recipe); gradient
checkpointing (non-reentrant) on; AdamW; bf16 = bf16 weights + autocast (CPU or CUDA).
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def build_model(job, model_dir, precision, device, layers):
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import LoraConfig, get_peft_model
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if job == "a":
        config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers, num_attention_heads=32,
                             num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
                             attn_implementation="sdpa")
        with torch.device(device):
            model = LlamaForCausalLM(config).to(dtype)
    else:
        model = LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype,
                                                 attn_implementation="sdpa").to(device)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    lora = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def job_b_batches(model_dir, data_file, batch, max_len):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer.model"))
    records = json.load(open(data_file))
    with_input = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                  "Write a response that appropriately completes the request.\n\n"
                  "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
    without = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
               "request.\n\n### Instruction:\n{instruction}\n\n### Response:")
    examples = []
    for r in records:
        source = (with_input if r["input"] else without).format_map(r)
        ids = ([sp.bos_id()] + sp.encode(source + r["output"]))[:max_len]
        if len(ids) < max_len:
            ids.append(sp.eos_id())
        n_src = min(1 + len(sp.encode(source)), max_len)
        labels = [-100] * n_src + ids[n_src:]
        if any(l != -100 for l in labels[1:]):
            examples.append((ids, labels[:len(ids)]))
    batches = []
    for i in range(0, len(examples) - batch + 1, batch):
        chunk = examples[i:i + batch]
        T = max(len(ids) for ids, _ in chunk)
        input_ids = torch.zeros(batch, T, dtype=torch.long)
        labels = torch.full((batch, T), -100, dtype=torch.long)
        mask = torch.zeros(batch, T, dtype=torch.long)
        for b, (ids, lab) in enumerate(chunk):
            input_ids[b, :len(ids)] = torch.tensor(ids)
            labels[b, :len(lab)] = torch.tensor(lab)
            mask[b, :len(ids)] = 1
        batches.append((input_ids, labels, mask, sum(len(ids) for ids, _ in chunk)))
    return batches


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--job", choices=["a", "b"], required=True)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--model", default=os.path.join(ROOT, "demo", "stories260K-hf"), help="job b's model")
    p.add_argument("--data", default=os.path.join(ROOT, "demo", "instructions.json"), help="job b's records")
    p.add_argument("--prefix", default="torch")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--layers", type=int, default=2, help="job a's decoder layers")
    p.add_argument("--batch", type=int, default=1, help="job a's sequences per micro-batch")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.job, args.model, args.precision, args.device, args.layers)
    model.train()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)
    if args.job == "a":
        ids = ((torch.arange(args.seq) * 7919 + 13) % 32000)[None].repeat(args.batch, 1)
        batches = [(ids, ids, torch.ones(args.batch, args.seq, dtype=torch.long), args.batch * args.seq)]
    else:
        batches = job_b_batches(args.model, args.data, 4, 256)
    times, tokens = [], []
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    cuda = args.device == "cuda"
    for step in range(args.steps + 1):
        input_ids, labels, mask, n_tokens = (t.to(args.device) if torch.is_tensor(t) else t
                                             for t in batches[step % len(batches)])
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast:
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if step > 0:  # step 0 warms up
            times.append(dt)
            tokens.append(n_tokens)
    step_s = statistics.median(times)
    tps = sum(tokens) / sum(times)
    pre = args.prefix
    print(f"{pre}_torch_version={torch.__version__}")
    print(f"{pre}_threads={args.threads}")
    print(f"{pre}_step_s={step_s:.6g}")
    print(f"{pre}_tokens_per_s={tps:.6g}")
    print(f"{pre}_loss={loss.item():.6g}")
    print(f"{pre}_peak_rss_mib={peak_rss_mib():.6g}")
    if cuda:
        print(f"{pre}_device={torch.cuda.get_device_name()}")
        print(f"{pre}_peak_device_mib={torch.cuda.max_memory_allocated() / 2**20:.6g}")


if __name__ == "__main__":
    sys.exit(main())
