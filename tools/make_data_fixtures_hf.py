#!/usr/bin/env python3
"""The data fixtures again, from the real stack: Transformers' tokenizer built the way
optimum-habana's run_lora_clm.py builds it, and run_lora_clm's own preprocessing code.

tools/make_data_fixtures.py transcribes run_lora_clm's preprocessing and tokenizes with the
Python sentencepiece. This script instead reads run_lora_clm.py from a path you give (it is not
part of this repository and nothing is downloaded), takes out of it by AST — unchanged — the
statements of main() that build the tokenizer and preprocess the data:
  tokenizer_kwargs + AutoTokenizer.from_pretrained(...)   (use_fast from ModelArguments' default)
  the generation_config bos/eos/pad overrides
  the Alpaca prompt block (create_prompts -> prompt_sources / prompt_targets columns)
  tokenize(), preprocess_function(), raw_datasets.map(preprocess_function, batched=True)
  the --dataset_concatenation block (concatenate_data)
plus the module-level PROMPT_DICT, IGNORE_INDEX, create_prompts and the argument dataclasses
(their defaults are run_lora_clm's), and executes them on the first 100 public Alpaca records
at max_seq_length 256, with train_on_inputs False and True and dataset_concatenation on.
The full script cannot be imported: it needs optimum.habana, peft, evaluate.

Tokenizers ("model_name_or_path" for AutoTokenizer, offline):
  llama2       a folder made on the fly: llama2-tokenizer.model (ZEROLORA_SHARED_DATA) with
               meta-llama/Llama-2-*-hf's tokenizer_config.json fields; the Hub's tokenizer.json
               is not available, so the fast tokenizer is converted from tokenizer.model by the
               installed Transformers (LlamaConverter)
  stories260k  demo/stories260K-hf as it is
--variant chooses the class and the legacy flag: seed (default: what run_lora_clm builds, i.e.
use_fast=True -> LlamaTokenizerFast, config as shipped), or fast/slow x legacy true/false.

Modes:
  --compare    print, per tokenizer and variant, every record whose ids or labels differ from the
               committed fixtures (tests/fixtures/data/alpaca_<name>.safetensors), with the text
  --write      write tests/fixtures/data/alpaca_<name>_hf.safetensors (seed variant), same
               tensors and metadata as make_data_fixtures.py plus generator/version/commit fields
               (written only where they differ from the committed fixture unless --force)

Environment for the seed's stack (optimum-habana v1.12: transformers>=4.40,<4.41,
datasets<2.20):
  python3 -m venv venv && venv/bin/pip install transformers==4.40.2 tokenizers==0.19.1 \
      sentencepiece protobuf datasets==2.19.2 safetensors numpy
  ZEROLORA_SHARED_DATA=DIR venv/bin/python tools/make_data_fixtures_hf.py \
      --run-lora-clm /path/to/optimum-habana/examples/language-modeling/run_lora_clm.py --compare
Without `datasets` installed a minimal stand-in (column dicts) carries the data through the
same statements; the metadata says which was used.
"""
import argparse
import ast
import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import types

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from public_data import shared_data  # noqa: E402

OUT = ROOT / "tests" / "fixtures" / "data"
MAX_SEQ_LENGTH = 256
RECORDS = 100

# meta-llama/Llama-2-{7b,13b,70b}-hf tokenizer_config.json (the fields that affect encoding).
LLAMA2_TOKENIZER_CONFIG = {
    "add_bos_token": True,
    "add_eos_token": False,
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": None,
    "clean_up_tokenization_spaces": False,
    "legacy": False,
    "model_max_length": 1000000000000000019884624838656,
    "padding_side": "right",
    "sp_model_kwargs": {},
    "tokenizer_class": "LlamaTokenizer",
}
# Its generation_config.json ids (run_lora_clm copies them onto the tokenizer; pad is unused here).
LLAMA2_GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}

VARIANTS = {  # name: (use_fast, legacy: "shipped" keeps the folder's config)
    "seed": (None, "shipped"),
    "fast-legacy": (True, True),
    "fast-nolegacy": (True, False),
    "slow-legacy": (False, True),
    "slow-nolegacy": (False, False),
}


# ---------------------------------------------------------------- taking run_lora_clm apart
MODULE_NAMES = {"IGNORE_INDEX", "PROMPT_DICT", "SQL_PROMPT", "create_prompts", "create_sql_prompts",
                "ModelArguments", "DataArguments", "FinetuneArguments"}


def _main_statements(main):
    """run_lora_clm main()'s top-level statements that build the tokenizer and the data."""
    picked = []
    for stmt in main.body:
        text = ast.unparse(stmt)
        head = text.splitlines()[0]
        if (isinstance(stmt, ast.Assign) and head.startswith("tokenizer_kwargs =")
                or isinstance(stmt, ast.If) and "AutoTokenizer.from_pretrained" in text
                or isinstance(stmt, ast.If) and head.startswith("if hasattr(model.generation_config")
                and "tokenizer." in text
                or isinstance(stmt, ast.If) and head == "if tokenizer.pad_token_id is None:"
                or isinstance(stmt, ast.If)
                and head.startswith("if data_args.dataset_name == 'tatsu-lab/alpaca'")
                and "create_prompts" in text
                or isinstance(stmt, ast.FunctionDef) and stmt.name in ("tokenize", "preprocess_function")
                or isinstance(stmt, ast.With) and "raw_datasets.map(preprocess_function" in text
                or isinstance(stmt, ast.If) and head == "if data_args.dataset_concatenation:"):
            picked.append(stmt)
    return picked


def load_run_lora_clm(path):
    source = path.read_text()
    tree = ast.parse(source, str(path))
    module_part, main = [], None
    for stmt in tree.body:
        names = ({t.id for t in stmt.targets if isinstance(t, ast.Name)} if isinstance(stmt, ast.Assign)
                 else {stmt.name} if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)) else set())
        if names & MODULE_NAMES:
            module_part.append(stmt)
        if isinstance(stmt, ast.FunctionDef) and stmt.name == "main":
            main = stmt
    if main is None:
        raise SystemExit(f"{path}: no main()")
    main_part = _main_statements(main)
    kinds = [ast.unparse(s).splitlines()[0] for s in main_part]
    # tokenizer_kwargs, from_pretrained, the prompt block, 3 generation_config ifs, the pad if,
    # tokenize, preprocess_function, the map, the concatenation block
    if len(main_part) != 11:
        raise SystemExit(f"{path}: expected 11 statements of main(), found {len(main_part)}:\n"
                         + "\n".join(kinds))
    spans = [f"{s.lineno}-{s.end_lineno}" for s in main_part]
    mod_spans = [f"{s.lineno}-{s.end_lineno}" for s in module_part]
    return {
        "module": compile(ast.Module(body=module_part, type_ignores=[]), str(path), "exec"),
        "main": [compile(ast.Module(body=[s], type_ignores=[]), str(path), "exec") for s in main_part],
        "lines": "module " + ",".join(mod_spans) + "; main " + ",".join(spans),
    }


# ---------------------------------------------------------------- datasets, or a stand-in
class _Batch:
    def __init__(self, data):
        self.data = data

    def __getitem__(self, key):
        return self.data[key]


class _Dataset:
    """The few `datasets.Dataset` operations the run_lora_clm statements use."""

    def __init__(self, columns):
        self.columns = dict(columns)

    @classmethod
    def from_dict(cls, mapping):
        return cls(mapping)

    @property
    def features(self):
        return {k: None for k in self.columns}

    def __len__(self):
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, key):
        return self.columns[key]

    def __iter__(self):
        for i in range(len(self)):
            yield {k: v[i] for k, v in self.columns.items()}

    def add_column(self, name, values):
        return _Dataset({**self.columns, name: list(values)})

    def remove_columns(self, names):
        names = [names] if isinstance(names, str) else names
        return _Dataset({k: v for k, v in self.columns.items() if k not in names})

    def map(self, function, batched=False, **_):
        assert batched
        out = function(_Batch(dict(self.columns)))  # one batch: 100 rows < datasets' 1000
        return _Dataset({**self.columns, **out})


class _DatasetDict(dict):
    def map(self, function, **kw):
        return _DatasetDict({k: v.map(function, **kw) for k, v in self.items()})


def make_raw_datasets(records):
    try:
        import datasets
        datasets.disable_progress_bar()
        return datasets, datasets.DatasetDict({"train": datasets.Dataset.from_list(records)}), \
            f"datasets {datasets.__version__}"
    except ImportError:
        cols = {k: [r[k] for r in records] for k in records[0]}
        return types.SimpleNamespace(Dataset=_Dataset), _DatasetDict({"train": _Dataset(cols)}), \
            "stand-in for datasets (datasets not installed)"


# ---------------------------------------------------------------- running it
def tokenizer_folder(name, variant, tmp):
    """The model_name_or_path handed to AutoTokenizer for this tokenizer and variant."""
    use_fast, legacy = VARIANTS[variant]
    folder = pathlib.Path(tempfile.mkdtemp(prefix=f"{name}-{variant}-", dir=tmp))
    if name == "llama2":
        shutil.copy(shared_data() / "llama2-tokenizer.model", folder / "tokenizer.model")
        config = dict(LLAMA2_TOKENIZER_CONFIG)
        (folder / "generation_config.json").write_text(json.dumps(LLAMA2_GENERATION_CONFIG))
    else:
        src = ROOT / "demo" / "stories260K-hf"
        for f in ("tokenizer.model", "special_tokens_map.json", "generation_config.json"):
            shutil.copy(src / f, folder / f)
        config = json.loads((src / "tokenizer_config.json").read_text())
    if legacy != "shipped":
        config["legacy"] = legacy
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder, use_fast


def run(code, records, name, variant, tmp, train_on_inputs):
    import transformers
    folder, use_fast = tokenizer_folder(name, variant, tmp)
    ns = {"__name__": "run_lora_clm_parts", "copy": __import__("copy"), "AutoTokenizer": transformers.AutoTokenizer,
          "transformers": transformers, "logger": types.SimpleNamespace(info=print, warning=print)}
    exec("from dataclasses import dataclass, field\nfrom typing import List, Optional", ns)
    exec(code["module"], ns)
    datasets_mod, raw_datasets, datasets_used = make_raw_datasets(records)
    model_args = ns["ModelArguments"](model_name_or_path=str(folder))
    if use_fast is not None:
        model_args.use_fast_tokenizer = use_fast
    data_args = ns["DataArguments"](dataset_name="tatsu-lab/alpaca", max_seq_length=MAX_SEQ_LENGTH,
                                    dataset_concatenation=True)
    finetune_args = ns["FinetuneArguments"](train_on_inputs=train_on_inputs)
    training_args = types.SimpleNamespace(do_eval=False, do_train=True,
                                          main_process_first=lambda desc="": contextlib.nullcontext())
    model = types.SimpleNamespace(generation_config=transformers.GenerationConfig.from_pretrained(folder))
    ns.update(datasets=datasets_mod, raw_datasets=raw_datasets, model_args=model_args, data_args=data_args,
              finetune_args=finetune_args, training_args=training_args, model=model)
    for stmt in code["main"]:
        exec(stmt, ns)
        if "tokenized_datasets" in ns and "per_example" not in ns:
            train = ns["tokenized_datasets"]["train"]
            ns["per_example"] = {k: [list(x) for x in train[k]] for k in ("input_ids", "labels")}
    tok = ns["tokenizer"]
    concat = ns["tokenized_datasets"]["train"]
    return {
        "input_ids": ns["per_example"]["input_ids"], "labels": ns["per_example"]["labels"],
        "concat.input_ids": [list(x) for x in concat["input_ids"]],
        "concat.labels": [list(x) for x in concat["labels"]],
        "class": type(tok).__name__, "legacy": getattr(tok, "legacy", tok.init_kwargs.get("legacy")), "datasets": datasets_used,
        "prompts": (raw_datasets["train"]["prompt_sources"], raw_datasets["train"]["prompt_targets"]),
        "tokenizer": tok,
    }


def tensors_of(masked, unmasked):
    assert masked["input_ids"] == unmasked["input_ids"]
    flat = lambda rows: np.array([t for r in rows for t in r], dtype=np.int32)  # noqa: E731
    return {
        "masked.input_ids": flat(masked["input_ids"]), "masked.labels": flat(masked["labels"]),
        "masked.lengths": np.array([len(x) for x in masked["input_ids"]], dtype=np.int32),
        "unmasked.labels": flat(unmasked["labels"]),
        "concat.input_ids": np.array(masked["concat.input_ids"], dtype=np.int32).reshape(-1, MAX_SEQ_LENGTH),
        "concat.labels": np.array(masked["concat.labels"], dtype=np.int32).reshape(-1, MAX_SEQ_LENGTH),
    }


def split_rows(flat, lengths):
    out, at = [], 0
    for n in lengths:
        out.append(flat[at:at + n].tolist())
        at += n
    return out


def compare(name, variant, masked, unmasked, committed):
    """Every difference from the committed fixture, record by record."""
    ref_rows = split_rows(committed["masked.input_ids"], committed["masked.lengths"])
    ref_lab = split_rows(committed["masked.labels"], committed["masked.lengths"])
    ref_unl = split_rows(committed["unmasked.labels"], committed["masked.lengths"])
    tok = masked["tokenizer"]
    sources, targets = masked["prompts"]
    diffs = []
    for i, (a, b) in enumerate(zip(masked["input_ids"], ref_rows)):
        la, lb, ua, ub = masked["labels"][i], ref_lab[i], unmasked["labels"][i], ref_unl[i]
        if a == b and la == lb and ua == ub:
            continue
        p = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
        lo = max(0, p - 3)
        text = sources[i] + targets[i]
        what = []
        if a != b:
            what.append(f"ids: len {len(a)} vs committed {len(b)}, first difference at token {p}: "
                        f"hf {tok.convert_ids_to_tokens(a[lo:p + 5])} vs committed "
                        f"{tok.convert_ids_to_tokens(b[lo:p + 5])}")
        if la != lb:
            what.append(f"masked labels: masked prefix hf {sum(x == -100 for x in la)} vs committed "
                        f"{sum(x == -100 for x in lb)}")
        if ua != ub and a == b:
            what.append("unmasked labels differ")
        diffs.append((i, what, text))
    blocks_equal = (np.array_equal(np.array(masked["concat.input_ids"]).reshape(-1, MAX_SEQ_LENGTH),
                                   committed["concat.input_ids"])
                    and np.array_equal(np.array(masked["concat.labels"]).reshape(-1, MAX_SEQ_LENGTH),
                                       committed["concat.labels"]))
    print(f"== {name} / {variant}: {masked['class']} legacy={masked['legacy']} ({masked['datasets']}): "
          f"{len(diffs)} of {len(ref_rows)} records differ; concat blocks "
          f"{'equal' if blocks_equal else 'differ'} ({len(masked['concat.input_ids'])} vs "
          f"{len(committed['concat.input_ids'])})")
    for i, what, text in diffs:
        print(f"  record {i}: " + "; ".join(what))
        print(f"    text: {text!r}"[:400])
    return not diffs and blocks_equal


def versions():
    import tokenizers
    import transformers
    v = f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}"
    with contextlib.suppress(ImportError):
        import sentencepiece
        v += f", sentencepiece {sentencepiece.__version__}"
    return v


def git_commit(path):
    with contextlib.suppress(Exception):
        return subprocess.run(["git", "-C", str(path.parent), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-lora-clm", required=True, type=pathlib.Path,
                    help="path to optimum-habana's examples/language-modeling/run_lora_clm.py")
    ap.add_argument("--run-lora-clm-commit", default=None,
                    help="the optimum-habana commit the file is from (recorded in the metadata)")
    ap.add_argument("--tokenizers", nargs="+", default=["llama2", "stories260k"])
    ap.add_argument("--variants", nargs="+", default=["seed"], choices=list(VARIANTS))
    ap.add_argument("--compare", action="store_true")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--force", action="store_true", help="with --write: write even where equal to committed")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from safetensors.numpy import load_file, save_file

    code = load_run_lora_clm(args.run_lora_clm)
    commit = args.run_lora_clm_commit or git_commit(args.run_lora_clm.resolve()) or "unknown"
    print(f"run_lora_clm.py {args.run_lora_clm} (commit {commit}), statements used: lines {code['lines']}")
    print(versions())
    records = json.loads((shared_data() / "alpaca_en_demo.json").read_text())[:RECORDS]
    all_equal = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        os.environ["HF_HOME"] = str(tmp / "hf_home")
        for name in args.tokenizers:
            committed = load_file(OUT / f"alpaca_{name}.safetensors")
            for variant in args.variants:
                masked = run(code, records, name, variant, tmp, train_on_inputs=False)
                unmasked = run(code, records, name, variant, tmp, train_on_inputs=True)
                equal = True
                if args.compare:
                    equal = compare(name, variant, masked, unmasked, committed)
                    all_equal &= equal
                if args.write and variant == "seed":
                    tensors = tensors_of(masked, unmasked)
                    equal = all(np.array_equal(tensors[k], committed[k]) for k in tensors)
                    if equal and not args.force:
                        print(f"{name}: the real stack equals alpaca_{name}.safetensors; nothing written")
                        continue
                    meta = {"max_seq_length": str(MAX_SEQ_LENGTH), "records": str(RECORDS),
                            "generator": f"tools/make_data_fixtures_hf.py, {versions()}, {masked['datasets']}",
                            "tokenizer_class": masked["class"], "legacy": str(masked["legacy"]),
                            "run_lora_clm": f"optimum-habana examples/language-modeling/run_lora_clm.py "
                                            f"at {commit}, lines {code['lines']}"}
                    path = OUT / f"alpaca_{name}_hf.safetensors"
                    save_file(tensors, str(path), metadata=meta)
                    print(f"wrote {path.relative_to(ROOT)}")
    if args.compare:
        print("all equal to the committed fixtures" if all_equal else "differences found (above)")


if __name__ == "__main__":
    main()
