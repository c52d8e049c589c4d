#!/usr/bin/env python3
"""Reference token ids and labels for zerolora's data pipeline tests.

Replicates optimum-habana's run_lora_clm.py preprocessing (create_prompts, tokenize with
"EOS appended when room remains", preprocess_function's prompt masking, concatenate_data)
with the Llama tokenizer as HF's sentencepiece-based LlamaTokenizer runs it: BOS added,
truncation to max_length counting BOS. Tokenization is sentencepiece (PyPI), the library the
Llama tokenizer is. Writes tests/fixtures/data/alpaca_<tokenizer>.safetensors with, for the
first 100 public Alpaca records (alpaca_en_demo.json in the folder ZEROLORA_SHARED_DATA names)
at max_seq_length 256:
  masked.input_ids / masked.labels / masked.lengths     train_on_inputs = False
  unmasked.labels                                       train_on_inputs = True
  concat.input_ids / concat.labels [blocks, 256]        --dataset_concatenation (masked)
Run: python3 tools/make_data_fixtures.py
"""
import copy
import json
import pathlib

import sentencepiece as spm
import torch
from safetensors.torch import save_file

from public_data import shared_data

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "data"
IGNORE_INDEX = -100
MAX_SEQ_LENGTH = 256
RECORDS = 100

PROMPT_DICT = {  # run_lora_clm.py
    "prompt_with_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    "prompt_without_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
}


class SentencePieceLlamaTokenizer:
    """The slice of HF LlamaTokenizer that run_lora_clm uses: add_bos_token, truncation."""

    def __init__(self, path):
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.bos_token_id, self.eos_token_id = self.sp.bos_id(), self.sp.eos_id()

    def __call__(self, texts, truncation, max_length, padding=False, return_tensors=None):
        ids = [[self.bos_token_id] + self.sp.encode(t) for t in texts]
        if truncation:
            ids = [x[:max_length] for x in ids]
        return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]}


def create_prompts(examples):
    prompts = {"source": [], "target": []}
    for example in examples:
        template = PROMPT_DICT["prompt_with_input"] if example["input"] != "" else PROMPT_DICT["prompt_without_input"]
        prompts["source"].append(template.format_map(example))
        prompts["target"].append(example["output"])
    return prompts


def tokenize(tokenizer, prompt, add_eos_token=True):
    results = tokenizer(prompt, truncation=True, max_length=MAX_SEQ_LENGTH, padding=False, return_tensors=None)
    for i in range(len(results["input_ids"])):
        if (results["input_ids"][i][-1] != tokenizer.eos_token_id
                and len(results["input_ids"][i]) < MAX_SEQ_LENGTH and add_eos_token):
            results["input_ids"][i].append(tokenizer.eos_token_id)
            results["attention_mask"][i].append(1)
    results["labels"] = copy.deepcopy(results["input_ids"])
    results["input_id_len"] = [len(r) for r in results["input_ids"]]
    return results


def preprocess(tokenizer, prompts, train_on_inputs):
    st = [s + t for s, t in zip(prompts["source"], prompts["target"])]
    tokenized = tokenize(tokenizer, st)
    labels = tokenized["labels"]
    if not train_on_inputs:
        sources = tokenize(tokenizer, prompts["source"], add_eos_token=False)
        for label, source_len in zip(labels, sources["input_id_len"]):
            label[:source_len] = [IGNORE_INDEX] * source_len
    return tokenized["input_ids"], labels


def concatenate(column):
    flat = [t for sample in column for t in sample]
    return [flat[i * MAX_SEQ_LENGTH:(i + 1) * MAX_SEQ_LENGTH] for i in range(len(flat) // MAX_SEQ_LENGTH)]


def flat(rows):
    return torch.tensor([t for r in rows for t in r], dtype=torch.int32)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    shared = shared_data()
    records = json.loads((shared / "alpaca_en_demo.json").read_text())[:RECORDS]
    prompts = create_prompts(records)
    for name, path in {"llama2": shared / "llama2-tokenizer.model",
                       "stories260k": ROOT / "demo" / "stories260K-hf" / "tokenizer.model"}.items():
        tokenizer = SentencePieceLlamaTokenizer(path)
        ids, masked = preprocess(tokenizer, prompts, train_on_inputs=False)
        ids2, unmasked = preprocess(tokenizer, prompts, train_on_inputs=True)
        assert ids == ids2
        tensors = {
            "masked.input_ids": flat(ids), "masked.labels": flat(masked),
            "masked.lengths": torch.tensor([len(x) for x in ids], dtype=torch.int32),
            "unmasked.labels": flat(unmasked),
            "concat.input_ids": torch.tensor(concatenate(ids), dtype=torch.int32),
            "concat.labels": torch.tensor(concatenate(masked), dtype=torch.int32),
        }
        meta = {"max_seq_length": str(MAX_SEQ_LENGTH), "records": str(RECORDS),
                "generator": f"tools/make_data_fixtures.py, sentencepiece {spm.__version__}"}
        save_file(tensors, OUT / f"alpaca_{name}.safetensors", metadata=meta)
        truncated = sum(1 for x in ids if len(x) == MAX_SEQ_LENGTH)
        print(f"{name}: {len(ids)} examples, {truncated} at max length, {len(tensors['concat.input_ids'])} blocks")


if __name__ == "__main__":
    main()
