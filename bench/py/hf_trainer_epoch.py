"""One epoch of Alpaca-format records (the demo's own by default) on stories260K-hf with HF Trainer + PEFT, as the seed
recipe's run_lora_clm does it (Alpaca template, prompt masked, concatenation into
max_seq_length blocks, LoRA r 4 / alpha 16 / dropout 0.05 on q, k, v, o, lr 0.0018, cosine,
3% warmup, batch 10, bf16, gradient checkpointing): the end-to-end reference for
bench/compare.py. Prints key=value lines; wall time covers tokenization and training.

  python3 hf_trainer_epoch.py [--model DIR] [--data FILE] --threads 2 [--max_seq_length 512]
"""
import argparse
import json
import os
import resource
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=os.path.join(ROOT, "demo", "stories260K-hf"))
    p.add_argument("--data", default=os.path.join(ROOT, "demo", "instructions.json"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max_seq_length", type=int, default=512)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--bf16", type=int, default=1)  # transformers 5: warmup_steps < 1 is a ratio
    args = p.parse_args()
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    import sentencepiece as spm
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM, Trainer, TrainingArguments, default_data_collator

    model_dir = args.model
    sp = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer.model"))
    records = json.load(open(args.data))
    with_input = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                  "Write a response that appropriately completes the request.\n\n"
                  "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
    without = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
               "request.\n\n### Instruction:\n{instruction}\n\n### Response:")
    L = args.max_seq_length
    ids_all, labels_all = [], []
    for r in records:  # run_lora_clm's tokenize + preprocess_function, then concatenate_data
        source = (with_input if r["input"] else without).format_map(r)
        ids = ([sp.bos_id()] + sp.encode(source + r["output"]))[:L]
        if ids[-1] != sp.eos_id() and len(ids) < L:
            ids.append(sp.eos_id())
        n_src = min(1 + len(sp.encode(source)), L)
        ids_all += ids
        labels_all += [-100] * min(n_src, len(ids)) + ids[n_src:]
    blocks = len(ids_all) // L
    data = Dataset.from_dict({"input_ids": [ids_all[i * L:(i + 1) * L] for i in range(blocks)],
                              "labels": [labels_all[i * L:(i + 1) * L] for i in range(blocks)],
                              "attention_mask": [[1] * L for _ in range(blocks)]})
    model = LlamaForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "v_proj", "k_proj", "o_proj"]))
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(output_dir=out, per_device_train_batch_size=10, learning_rate=0.0018,
                                     warmup_steps=0.03, lr_scheduler_type="cosine", num_train_epochs=args.epochs,
                                     bf16=bool(args.bf16), use_cpu=True, gradient_checkpointing=True,
                                     gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=10,
                                     save_strategy="no", report_to=[], dataloader_num_workers=0, seed=42,
                                     disable_tqdm=True)
        trainer = Trainer(model=model, args=training, train_dataset=data, data_collator=default_data_collator)
        result = trainer.train()
    wall = time.perf_counter() - start
    print(f"hf_threads={args.threads}")
    print(f"hf_blocks={blocks}")
    print(f"hf_train_runtime={result.metrics['train_runtime']:.6g}")
    print(f"hf_train_loss={result.metrics['train_loss']:.6g}")
    print(f"hf_wall_s={wall:.6g}")
    print(f"hf_peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.6g}")


if __name__ == "__main__":
    main()
