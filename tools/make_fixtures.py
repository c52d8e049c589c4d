#!/usr/bin/env python3
"""Reference fixtures for zerolora's numerical tests, from the real stack:
torch + transformers (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM) + peft (LoRA) +
torch.optim.AdamW.

For each tiny random configuration it writes tests/fixtures/<case>/:
  model/            an HF model directory (config.json + bf16 safetensors, sharded for one case)
  reference.safetensors
      input_ids, attention_mask, labels      [B, T] (right padding, labels -100 on prompt/pad)
      logits [B, T, V], loss []              fp32 forward of the PEFT model
      lora.<peft name>                       LoRA weights before training (B made non-zero)
      grad.<peft name>                       d loss / d LoRA weight
      step3.<peft name>                      LoRA weights after 3 AdamW steps with clipping
      losses [3], grad_norms [3]             loss and pre-clip gradient norm of each step
  metadata: LoRA and optimizer settings.
And tests/fixtures/stories260k/reference.safetensors for the real model in demo/stories260K-hf
(on three public Alpaca records: ZEROLORA_SHARED_DATA names the folder holding them).

Weights are rounded to bf16 before anything runs, so the bf16 model files hold exactly the
weights the fp32 reference used. Run: python3 tools/make_fixtures.py (about a minute);
--only CASE [CASE ...] rebuilds just those cases (stories260k included by name).
"""
import argparse
import json
import pathlib
import shutil

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from safetensors.torch import save_file
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

ARCHITECTURES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
                 "mistral": (MistralConfig, MistralForCausalLM)}

from public_data import shared_data

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures"
DEMO_MODEL = ROOT / "demo" / "stories260K-hf"

CASES = {
    # GQA (4 query heads share 2 kv heads), tied embeddings, LoRA on attention.
    "gqa_tied": dict(
        config=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=128, tie_word_embeddings=True, rms_norm_eps=1e-5),
        lora=dict(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        lengths=[12, 9], prompt=3, shard=None),
    # Odd sizes: hidden 72 (not a power of two), head_dim 16 != 72/3, vocab 97; untied
    # embeddings; LoRA on all seven projections with rsLoRA; sharded checkpoint.
    "odd_untied_all": dict(
        config=dict(hidden_size=72, intermediate_size=100, num_hidden_layers=2, num_attention_heads=3,
                    num_key_value_heads=3, head_dim=16, vocab_size=97, tie_word_embeddings=False,
                    rms_norm_eps=1e-6),
        lora=dict(r=3, lora_alpha=8, use_rslora=True,
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
        lengths=[10, 16, 5], prompt=4, shard="60KB"),
    # llama3 rope scaling (positions past original_max_position_embeddings), MQA (1 kv head).
    "llama3_rope": dict(
        config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=1, vocab_size=64, tie_word_embeddings=True, rms_norm_eps=1e-5,
                    max_position_embeddings=256,
                    rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                         low_freq_factor=1.0, high_freq_factor=4.0,
                                         original_max_position_embeddings=16)),
        lora=dict(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]),
        lengths=[40], prompt=5, shard=None),
    # linear rope scaling.
    "linear_rope": dict(
        config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1, vocab_size=50, tie_word_embeddings=False, rms_norm_eps=1e-5,
                    rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0)),
        lora=dict(r=2, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        lengths=[20, 7], prompt=2, shard=None),
    # Qwen2: biases on q, k and v (made non-zero), tied embeddings, rope theta 1e6; the vocabulary
    # of the qwen2 tokenizer fixture, so the interop test can train it on chat data.
    "qwen2_bias": dict(
        arch="qwen2",
        config=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=640, tie_word_embeddings=True, rms_norm_eps=1e-6,
                    rope_theta=1000000.0, max_position_embeddings=512, use_sliding_window=False),
        lora=dict(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        lengths=[14, 9], prompt=3, shard=None),
    # Mistral: head_dim 12 != 48/4, untied, LoRA on all projections, a sliding window of 8
    # positions, shorter than the sequences.
    "mistral_window": dict(
        arch="mistral",
        config=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=12, vocab_size=90, tie_word_embeddings=False,
                    rms_norm_eps=1e-5, sliding_window=8, rope_theta=1000000.0),
        lora=dict(r=4, lora_alpha=8,
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
        lengths=[24, 13], prompt=4, shard=None),
}

ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
MAX_GRAD_NORM = 0.05
STEPS = 3


def round_to_bf16_(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())


def make_batch(gen, lengths, vocab, prompt):
    B, T = len(lengths), max(lengths)
    input_ids = torch.zeros(B, T, dtype=torch.long)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids = torch.randint(1, vocab, (n,), generator=gen)
        input_ids[b, :n] = ids
        attention_mask[b, :n] = 1
        labels[b, prompt:n] = ids[prompt:]
    return input_ids, attention_mask, labels


def build_case(name, spec, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    config_class, model_class = ARCHITECTURES[spec.get("arch", "llama")]
    config = config_class(**spec["config"], attn_implementation="eager")
    model = model_class(config).float()
    with torch.no_grad():  # non-trivial norm weights and biases, so their use is tested
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif n.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    round_to_bf16_(model)

    case_dir = OUT / name
    if case_dir.exists():
        shutil.rmtree(case_dir)
    model_dir = case_dir / "model"
    bf16 = model_class(config)
    bf16.load_state_dict(model.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    kwargs = dict(safe_serialization=True)
    if spec["shard"]:
        kwargs["max_shard_size"] = spec["shard"]
    bf16.save_pretrained(model_dir, **kwargs)
    for junk in ("generation_config.json",):
        (model_dir / junk).unlink(missing_ok=True)

    lora = LoraConfig(lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", **spec["lora"])
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():  # B = 0 would make every A gradient zero; use random B instead
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    input_ids, attention_mask, labels = make_batch(gen, spec["lengths"], config.vocab_size, spec["prompt"])

    tensors = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    state = get_peft_model_state_dict(peft_model)
    for k, v in state.items():
        tensors["lora." + k] = v.detach().clone()
    named = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    # map live parameter names ("...lora_A.default.weight") to PEFT file names
    file_name = {n: n.replace(".default", "") for n in named}

    peft_model.train()
    out = peft_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    tensors["logits"] = out.logits.detach().float()
    tensors["loss"] = out.loss.detach().float().reshape(())
    out.loss.backward()
    for n, p in named.items():
        tensors["grad." + file_name[n]] = p.grad.detach().clone()

    params = list(named.values())
    opt = torch.optim.AdamW(params, **ADAMW)
    losses, norms = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        out = peft_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        out.loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)))
        opt.step()
        losses.append(out.loss.item())
    for n, p in named.items():
        tensors["step3." + file_name[n]] = p.detach().clone()
    tensors["losses"] = torch.tensor(losses, dtype=torch.float32)
    tensors["grad_norms"] = torch.tensor(norms, dtype=torch.float32)

    meta = {
        "lora_rank": str(lora.r), "lora_alpha": str(lora.lora_alpha),
        "use_rslora": str(bool(lora.use_rslora)).lower(),
        "target_modules": ",".join(sorted(spec["lora"]["target_modules"])),
        "lr": str(ADAMW["lr"]), "beta1": str(ADAMW["betas"][0]), "beta2": str(ADAMW["betas"][1]),
        "eps": str(ADAMW["eps"]), "weight_decay": str(ADAMW["weight_decay"]),
        "max_grad_norm": str(MAX_GRAD_NORM), "steps": str(STEPS),
        "generator": f"tools/make_fixtures.py: torch {torch.__version__}, "
                     f"transformers {__import__('transformers').__version__}, peft {__import__('peft').__version__}",
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, case_dir / "reference.safetensors", metadata=meta)
    print(f"{name}: loss {tensors['loss'].item():.6f}, losses {losses}")


ALPACA_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n"
                     "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately "
                   "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")


def build_stories260k():
    import sentencepiece as spm
    model_dir = DEMO_MODEL
    model = LlamaForCausalLM.from_pretrained(model_dir, attn_implementation="eager").float().eval()
    prompt = torch.tensor([[1, 403, 407, 261, 378]])
    with torch.no_grad():
        gen = model.generate(prompt, max_new_tokens=60, do_sample=False, pad_token_id=0)
        prompt_logits = model(prompt).logits[0].float()
    sp = spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model"))
    records = json.loads((shared_data() / "alpaca_en_demo.json").read_text())
    picks = [records[0], records[1], next(r for r in records if r.get("input"))]
    ids_all, labels_all, lengths = [], [], []
    for r in picks:
        template = ALPACA_WITH_INPUT if r.get("input") else ALPACA_NO_INPUT
        prompt_text = template.format(instruction=r["instruction"], input=r.get("input", ""))
        p_ids = [sp.bos_id()] + sp.encode(prompt_text)
        o_ids = sp.encode(r["output"]) + [sp.eos_id()]
        ids = (p_ids + o_ids)[:256]
        labels = ([-100] * len(p_ids) + o_ids)[:256]
        ids_all += ids
        labels_all += labels
        lengths.append(len(ids))
    losses = []
    total, count = 0.0, 0
    with torch.no_grad():
        offset = 0
        for n in lengths:
            ids = torch.tensor([ids_all[offset:offset + n]])
            lab = torch.tensor([labels_all[offset:offset + n]])
            out = model(input_ids=ids, labels=lab)
            k = int((lab[0, 1:] != -100).sum())
            losses.append(out.loss.item())
            total += out.loss.item() * k
            count += k
            offset += n
    tensors = {
        "prompt_ids": prompt[0], "greedy_ids": gen[0], "prompt_logits": prompt_logits,
        "alpaca_ids": torch.tensor(ids_all), "alpaca_labels": torch.tensor(labels_all),
        "alpaca_lengths": torch.tensor(lengths), "alpaca_losses": torch.tensor(losses, dtype=torch.float32),
        "alpaca_mean_loss": torch.tensor(total / count, dtype=torch.float32),
    }
    out_dir = OUT / "stories260k"
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, out_dir / "reference.safetensors",
              metadata={"generator": "tools/make_fixtures.py", "text": sp.decode(gen[0].tolist())})
    print("stories260k:", sp.decode(gen[0].tolist())[:80], "...", "alpaca losses", losses)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="CASE",
                        help="rebuild only these cases (" + ", ".join([*CASES, "stories260k"]) + ")")
    args = parser.parse_args()
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    for seed, (name, spec) in enumerate(CASES.items()):  # the seed stays the case's position
        if not args.only or name in args.only:
            build_case(name, spec, 1234 + seed)
    if not args.only or "stories260k" in args.only:
        build_stories260k()


if __name__ == "__main__":
    main()
