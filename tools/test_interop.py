"""Interoperability with the real clients, Transformers + PEFT (run by ctest via pytest):
  1. PEFT loads an adapter trained by `zerolora train` and reproduces zerolora's logits;
  2. a checkpoint written by `zerolora merge` loads in Transformers and matches base + adapter;
  3. zerolora loads an adapter written by PEFT and reproduces PEFT's logits;
  4. the same for the other families, on tools/make_fixtures.py's tiny models: a Qwen2 (q/k/v
     biases) trained by `zerolora train` on conversations through the Qwen2.5 chat template
     loads in PEFT and merges into a checkpoint Transformers loads as Qwen2ForCausalLM; PEFT's
     adapters of a Qwen2 and a Mistral load in zerolora and merge.
Logits are compared in fp32 as max|a - b| / max|b| (the tolerance table's 1e-5 rule).
On the demo's model and instruction set (demo/). Environment: ZEROLORA_BIN (the executable).
Run as a script (ctest does), it exits 77 (skipped), saying why, when the reference stack is
not installed (scripts/python-env.sh installs it into .venv).
"""
import os
import pathlib
import subprocess
import sys

if __name__ == "__main__":
    try:
        import peft, pytest, safetensors, torch, transformers  # noqa: F401
    except ImportError as e:
        print(f"skipped: the reference stack is not installed in {sys.executable} ({e}); "
              "scripts/python-env.sh installs it into .venv")
        sys.exit(77)
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", __file__]))

import pytest  # noqa: E402
import torch  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
BIN = os.environ.get("ZEROLORA_BIN", str(ROOT / "build" / "zerolora"))
BASE = ROOT / "demo" / "stories260K-hf"
DEMO_DATA = ROOT / "demo" / "instructions.json"
PROMPT_IDS = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315]
TOLERANCE = 1e-5  # fp32 on both sides: summation order only (tests/tolerances.hpp)


def run(*args):
    result = subprocess.run([BIN, *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, f"zerolora {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def zerolora_logits(tmp, model, adapter=None):
    out = tmp / "logits.safetensors"
    args = ["forward", "--model", model, "--input_ids", ",".join(map(str, PROMPT_IDS)), "--output", out, "--dtype", "fp32"]
    if adapter:
        args += ["--adapter", adapter]
    run(*args)
    return load_file(str(out))["logits"]


def torch_logits(model):
    with torch.no_grad():
        return model(torch.tensor([PROMPT_IDS])).logits[0].float()


def rel_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


def base_model():
    return LlamaForCausalLM.from_pretrained(BASE, attn_implementation="eager").float().eval()


@pytest.fixture(scope="module")
def trained_adapter(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    run("train", "--model_name_or_path", BASE, "--train_file", DEMO_DATA, "--output_dir", out,
        "--max_steps", 8, "--per_device_train_batch_size", 2, "--max_seq_length", 256, "--learning_rate", 5e-3,
        "--lora_rank", 4, "--lora_alpha", 16, "--use_rslora", "--lora_target_modules", "all-linear",
        "--save_strategy", "no", "--bf16", "false")
    return out


def test_peft_loads_our_adapter(trained_adapter, tmp_path):
    model = PeftModel.from_pretrained(base_model(), trained_adapter).eval()
    assert model.peft_config["default"].use_rslora
    ours = zerolora_logits(tmp_path, BASE, trained_adapter)
    theirs = torch_logits(model)
    assert rel_error(theirs, torch_logits(base_model())) > 1e-3, "the adapter changes nothing: a vacuous test"
    assert rel_error(ours, theirs) < TOLERANCE


def test_merged_checkpoint_loads_in_transformers(trained_adapter, tmp_path):
    merged = tmp_path / "merged"
    run("merge", "--model", BASE, "--adapter", trained_adapter, "--output_dir", merged, "--dtype", "fp32",
        "--max_shard_size", "300KB")
    assert (merged / "model.safetensors.index.json").exists()  # sharded, as asked
    reloaded = LlamaForCausalLM.from_pretrained(merged, attn_implementation="eager").float().eval()
    with_adapter = PeftModel.from_pretrained(base_model(), trained_adapter).eval()
    assert rel_error(torch_logits(reloaded), torch_logits(with_adapter)) < TOLERANCE


def peft_adapter(base, tmp_path, seed, **lora):
    """A PEFT adapter on `base`, saved under tmp_path: the model and the adapter directory."""
    torch.manual_seed(seed)
    model = get_peft_model(base, LoraConfig(lora_dropout=0.0, task_type="CAUSAL_LM", **lora))
    with torch.no_grad():  # PEFT initialises B = 0: make the adapter do something
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    adapter = tmp_path / "peft_adapter"
    model.save_pretrained(adapter)
    return model, adapter


def test_we_load_a_peft_adapter(tmp_path):
    model, adapter = peft_adapter(base_model(), tmp_path, 0, r=8, lora_alpha=32,
                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"])
    ours = zerolora_logits(tmp_path, BASE, adapter)
    assert rel_error(ours, torch_logits(model)) < TOLERANCE


# Qwen2 (q/k/v biases, tied embeddings) and Mistral: the tiny fixture models of
# tools/make_fixtures.py, with Transformers' own classes.
FIXTURES = ROOT / "tests" / "fixtures"
SMALL_PROMPT = [3, 17, 42, 5, 61, 8, 29, 13, 77, 2]


def auto_model(path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").float().eval()


def small_logits(model):
    with torch.no_grad():
        return model(torch.tensor([SMALL_PROMPT])).logits[0].float()


def zerolora_small_logits(tmp, model, adapter=None):
    out = tmp / "logits.safetensors"
    args = ["forward", "--model", model, "--input_ids", ",".join(map(str, SMALL_PROMPT)), "--output", out,
            "--dtype", "fp32"]
    if adapter:
        args += ["--adapter", adapter]
    run(*args)
    return load_file(str(out))["logits"]


@pytest.fixture(scope="module")
def qwen2_chat_adapter(tmp_path_factory):
    """A Qwen2-style model directory (the qwen2_bias fixture, the qwen2 fixture tokenizer, the
    released Qwen2.5 chat template), fine-tuned by `zerolora train` on conversations."""
    import json
    import shutil
    work = tmp_path_factory.mktemp("qwen2")
    model = work / "model"
    shutil.copytree(FIXTURES / "qwen2_bias" / "model", model)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIXTURES / "tokenizers" / "qwen2" / name, model / name)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = (FIXTURES / "chat_templates" / "qwen2.5.jinja").read_text()
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    records = json.loads(DEMO_DATA.read_text())[:40]
    chats = work / "chats.jsonl"
    chats.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]}) + "\n"
        for r in records))
    out = work / "run"
    run("train", "--model_name_or_path", model, "--train_file", chats, "--output_dir", out,
        "--max_steps", 6, "--per_device_train_batch_size", 2, "--max_seq_length", 256, "--learning_rate", 1e-2,
        "--lora_rank", 4, "--lora_alpha", 16, "--lora_target_modules", "all-linear",
        "--save_strategy", "no", "--bf16", "false")
    return model, out


def test_qwen2_adapter_loads_in_peft_and_merges(qwen2_chat_adapter, tmp_path):
    model, adapter = qwen2_chat_adapter
    with_adapter = PeftModel.from_pretrained(auto_model(model), adapter).eval()
    theirs = small_logits(with_adapter)
    assert rel_error(theirs, small_logits(auto_model(model))) > 1e-3, "the adapter changes nothing"
    assert rel_error(zerolora_small_logits(tmp_path, model, adapter), theirs) < TOLERANCE
    merged = tmp_path / "merged"
    run("merge", "--model", model, "--adapter", adapter, "--output_dir", merged, "--dtype", "fp32")
    reloaded = auto_model(merged)
    assert type(reloaded).__name__ == "Qwen2ForCausalLM"
    assert rel_error(small_logits(reloaded), theirs) < TOLERANCE


@pytest.mark.parametrize("fixture", ["qwen2_bias", "mistral_window"])
def test_we_load_and_merge_a_peft_adapter_of_other_families(fixture, tmp_path):
    base = FIXTURES / fixture / "model"
    model, adapter = peft_adapter(auto_model(base), tmp_path, 1, r=4, lora_alpha=8,
                                  target_modules=["q_proj", "v_proj", "down_proj"])
    theirs = small_logits(model)
    assert rel_error(zerolora_small_logits(tmp_path, base, adapter), theirs) < TOLERANCE
    merged = tmp_path / "merged"
    run("merge", "--model", base, "--adapter", adapter, "--output_dir", merged, "--dtype", "fp32")
    assert rel_error(small_logits(auto_model(merged)), theirs) < TOLERANCE
