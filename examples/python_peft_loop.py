"""The whole loop from Python: data with `datasets`, LoRA training with zerolora, the adapter
loaded with PEFT, text generated with Transformers.

    .venv/bin/pip install .                        # the zerolora package (see the README)
    .venv/bin/python examples/python_peft_loop.py  # about 30 s on 2 cores

It fine-tunes the repository's demo model (demo/stories260K-hf, a real 260K-parameter Llama) on
the demo instruction set with the seed recipe's LoRA settings, then answers one instruction
twice - through PEFT + Transformers and through zerolora.generate - which agree token for token
(greedy decoding, fp32), as the adapter is the same PEFT adapter either way.
"""

from pathlib import Path

import datasets
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

import zerolora

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "demo" / "stories260K-hf"
OUTPUT = ROOT / "out" / "python-example"

# 1. Data: any datasets.Dataset (or a list of dicts) with Alpaca columns, or chat "messages".
data = datasets.load_dataset("json", data_files=str(ROOT / "demo" / "instructions.json"),
                             split="train")
data = data.train_test_split(test_size=0.05, seed=0)

# 2. Train: the keywords are `zerolora train`'s flags, with its defaults.
curve = []
results = zerolora.train(
    model_name_or_path=MODEL, output_dir=OUTPUT, overwrite_output_dir=True,
    data=data["train"], eval_data=data["test"],
    num_train_epochs=2, per_device_train_batch_size=10, max_seq_length=512,
    dataset_concatenation=True, learning_rate=1.8e-3, lr_scheduler_type="cosine",
    warmup_ratio=0.03, lora_rank=4, lora_alpha=16, lora_dropout=0.05,
    lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], logging_steps=20,
    eval_strategy="epoch", save_strategy="no",
    callback=lambda metrics: curve.append((metrics["step"], metrics["loss"]))
    if "loss" in metrics else None)
print(f"trained {results['global_step']} steps, train loss {results['train_loss']:.4f}; "
      f"logged losses {[round(loss, 3) for _, loss in curve]}")

# 3. The adapter is a PEFT adapter: load it on the base model with PEFT.
tokenizer = AutoTokenizer.from_pretrained(MODEL)
base = AutoModelForCausalLM.from_pretrained(MODEL, torch_dtype=torch.float32)
model = PeftModel.from_pretrained(base, OUTPUT).eval()

# 4. Generate with Transformers, the prompt in the Alpaca template training used.
instruction = "Write a short story about Lily, a happy cat who wants to find her red ball."
prompt = ("Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request.\n\n### Instruction:\n" + instruction + "\n\n### Response:")
inputs = tokenizer(prompt, return_tensors="pt")
with torch.no_grad():
    output = model.generate(**inputs, max_new_tokens=48, do_sample=False)
answer = tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
print("PEFT + Transformers:", answer)

# The same through zerolora's own generate.
ours = zerolora.generate(MODEL, instruction, adapter=OUTPUT, template="alpaca", dtype="fp32",
                         max_new_tokens=48)
print("zerolora.generate:  ", ours)
if ours.strip() != answer.strip():
    raise SystemExit("the texts differ: the adapter does not act the same in PEFT")
print("the same text")
