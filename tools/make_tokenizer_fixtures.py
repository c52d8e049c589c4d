#!/usr/bin/env python3
"""Small tokenizer.json fixtures for each model family's pipeline, made by Hugging Face
`tokenizers` itself, and what `tokenizers` makes of a hostile corpus with them.

For each family a BPE vocabulary is trained (BpeTrainer) on zerolora's own demo instructions
and the hostile corpus, with the family's real normalizer / pre-tokenizer / decoder /
post-processor configuration (as in the released tokenizer.json files of those models), plus
added tokens of every kind (special or not, lstrip, rstrip, single_word, normalized):
  llama3    Split(Llama 3's regex, Isolated) + ByteLevel(use_regex false), ignore_merges,
            <|begin_of_text|> prepended by TemplateProcessing
  qwen2     NFC, Split(Qwen2's regex) + ByteLevel, no BOS
  gpt2      ByteLevel(use_regex true)
  smollm2   Digits(individual) + ByteLevel(use_regex true)
  mistral   Metaspace(prepend_scheme first, split false), byte fallback, fuse_unk; decoder
            Replace + ByteFallback + Fuse + Strip; tokenizer_class LlamaTokenizer (v0.3 style)
  llama2hf  Prepend("▁") + Replace(" ", "▁") normalizer, no pre-tokenizer, byte fallback (the
            Llama 2 / TinyLlama conversions)
  metaspace Metaspace(prepend_scheme always, split true), NFKC, Lowercase, Strip normalizers;
            Whitespace-free decoder Metaspace
Writes tests/fixtures/tokenizers/<family>/{tokenizer.json,tokenizer_config.json} and
tests/fixtures/tokenizers/expected.json: the corpus, and per family for each text the ids
(encode, add_special_tokens=False), the special tokens encode() puts in front, and the decodes
with and without special tokens (true where a decode gives the text back).
--check: recompute expected.json from the committed tokenizer.json files with the installed
tokenizers and fail when it differs (the vocabularies themselves are not retrained: the
trainer breaks ties in no fixed order).
"""
import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tokenizers"

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Text that breaks tokenizers: scripts, marks, whitespace, digits, special-token strings.
HOSTILE = [
    "Hello world",
    "",
    " ",
    "   ",
    "  leading spaces",
    "trailing spaces   ",
    "tabs\tand\t\ttabs",
    "multiple\n\nnewlines\r\nwindows\r\n\r\nline ends\n",
    "digits 1234567890 and 3.14159, 1,000,000 and 0007",
    "CJK 你好世界，这是一个测试。日本語のテキスト、한국어 텍스트",
    "Arabic مرحبا بالعالم and Hebrew שלום עולם",
    "Devanagari नमस्ते दुनिया, Thai สวัสดีชาวโลก",
    "emoji 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷",
    "combining: e\u0301 vs \u00e9, n\u0303, a\u0308\u0301",
    "compatibility: \u212b \ufb01 \u2460 \uff21\uff22 \u00bd \u2126",
    "special in text: <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "<s>[INST] hi [/INST] hello</s>",
    "</s>",
    "<s> <s><s>x</s>",
    "contractions: I'm, you're, they'll, it's, WE'VE, DON'T, she'd",
    "punctuation!!! ... ??? --- *** ((())) [[x]]",
    "\u00a0non-breaking\u3000ideographic\u2003em space",
    "url https://example.com/a?b=c&d=e#f and mail a.b@c.de",
    "code: def f(x):\n    return x**2  # comment\n\tpass",
    "mixed 123abc456 \u0661\u0662\u0663 (arabic-indic digits) \u216b \u00b2",
    "zero\u200bwidth\u200djoiner\ufeffbom",
    "\u00dcn\u00efc\u00f6d\u00e9 \u00c0\u00c9\u00ce\u00d5\u00dc stra\u00dfe \u03a3\u038a\u03a3\u03a5\u03a6\u039f\u03a3",
    "a" * 60,
    "\x01\x02 control chars \x7f and \x1b[0m",
    "math \U0001d518\U0001d52b\U0001d526 \U0001d7d9\U0001d7da",
    " \u2581 literal metaspace \u2581\u2581",
    "\u0120 literal byte-level chars \u010a",
    "added tokens: <mask> , <|tool|>   call, xyzzy word, notxyzzy, xyzzy.",
    "  <mask>  spaced  <|tool|>  ",
    "[INST]",
    "Mongolian vowel separator: a \u180ea, \u180e\u180e",
    "\u0130stanbul, D\u0130YARBAKIR",
    "xyzzy\u00b2 e\u0301xyzzy \u24b6xyzzy a\u200dxyzzy _xyzzy xyzzy_",
]


def demo_texts(limit):
    records = json.loads((ROOT / "demo" / "instructions.json").read_text())[:limit]
    return [" ".join(filter(None, [r["instruction"], r["input"], r["output"]])) for r in records]


def byte_tokens():
    return [f"<0x{b:02X}>" for b in range(256)]


def build(family, corpus):
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                            pre_tokenizers, processors, trainers)
    byte_level = family in ("llama3", "qwen2", "gpt2", "smollm2")
    specials = {
        "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|eot_id|>"],
        "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "gpt2": ["<|endoftext|>"],
        "smollm2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    }.get(family, ["<unk>", "<s>", "</s>"])
    if byte_level:
        tok = Tokenizer(models.BPE(ignore_merges=family == "llama3"))
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if family == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), "isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    elif family == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), "isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    elif family == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif family == "smollm2":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif family == "mistral":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first",
                                                     split=False)
    elif family == "llama2hf":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                               normalizers.Replace(" ", "\u2581")])
    elif family == "metaspace":
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(),
                                               normalizers.Strip(left=False, right=True)])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581",
                                                     prepend_scheme="always", split=True)
    if byte_level:
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        alphabet = []
    limits = {} if byte_level else {"limit_alphabet": 120}  # the rest by byte fallback
    trainer = trainers.BpeTrainer(vocab_size=600 if byte_level else 420, min_frequency=2,
                                  special_tokens=specials, initial_alphabet=alphabet,
                                  show_progress=False, **limits)
    if family == "llama2hf":  # no pre-tokenizer: train on metaspace words, apply the real one
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always",
                                                     split=True)
        tok.train_from_iterator(corpus, trainer)
        tok.pre_tokenizer = None
    else:
        tok.train_from_iterator(corpus, trainer)

    spec = json.loads(tok.to_str())
    if not byte_level:
        # Byte fallback as in the Llama / Mistral vocabularies: <0xXX> tokens right after the
        # special ones, the rest of the vocabulary moved up.
        vocab = spec["model"]["vocab"]
        first = len(specials)
        shifted = {t: (i if i < first else i + 256) for t, i in vocab.items()}
        for b, t in enumerate(byte_tokens()):
            shifted[t] = first + b
        spec["model"]["vocab"] = dict(sorted(shifted.items(), key=lambda kv: kv[1]))
        for a in spec["added_tokens"]:
            if a["id"] >= first:
                a["id"] += 256
        if family == "metaspace":
            spec["decoder"] = {"type": "Metaspace", "replacement": "\u2581",
                               "prepend_scheme": "always", "split": True}
        else:
            spec["decoder"] = {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    else:
        spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                           "use_regex": True}
    if family in ("gpt2", "smollm2"):  # newer files keep merges as pairs, older as strings
        spec["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m
                                   for m in spec["model"]["merges"]]
    tok = Tokenizer.from_str(json.dumps(spec))

    # Added tokens of every kind, and the family's post-processor.
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False)])
    tok.add_tokens([AddedToken("<|tool|>", rstrip=True, normalized=False),
                    AddedToken("xyzzy", single_word=True, normalized=True)])
    if family in ("mistral", "llama2hf", "metaspace"):
        tok.add_special_tokens(["[INST]", "[/INST]"])
    bos = {"llama3": "<|begin_of_text|>", "mistral": "<s>", "llama2hf": "<s>",
           "metaspace": "<s>"}.get(family)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    elif byte_level:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    config = {
        "llama3": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                   "tokenizer_class": "PreTrainedTokenizerFast"},
        "qwen2": {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                  "tokenizer_class": "Qwen2Tokenizer"},
        "gpt2": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                 "tokenizer_class": "GPT2Tokenizer"},
        "smollm2": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                    "tokenizer_class": "GPT2Tokenizer"},
        "mistral": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                    "add_bos_token": True, "add_eos_token": False,
                    "tokenizer_class": "LlamaTokenizer"},
        "llama2hf": {"bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>",
                     "unk_token": "<unk>", "tokenizer_class": "LlamaTokenizer"},
        "metaspace": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                      "tokenizer_class": "PreTrainedTokenizerFast"},
    }[family]
    return tok, config


FAMILIES = ["llama3", "qwen2", "gpt2", "smollm2", "mistral", "llama2hf", "metaspace"]


def expected_rows(tok, corpus):
    rows = []
    for text in corpus:
        ids = tok.encode(text, add_special_tokens=False).ids
        with_specials = tok.encode(text).ids
        decoded = tok.decode(ids, skip_special_tokens=False)
        skipped = tok.decode(ids, skip_special_tokens=True)
        # A decode equal to the text is written as true, to keep the file small.
        rows.append({"ids": ids, "prefix": with_specials[:len(with_specials) - len(ids)],
                     "decoded": True if decoded == text else decoded,
                     "decoded_skip_special": True if skipped == text else skipped})
    return rows


def expected_file(tokenizers_by_family, corpus):
    import tokenizers
    expected = {"corpus": corpus,
                "families": {f: expected_rows(t, corpus) for f, t in tokenizers_by_family.items()},
                "generator": {"script": "tools/make_tokenizer_fixtures.py",
                              "tokenizers": tokenizers.__version__}}
    return json.dumps(expected, ensure_ascii=False, separators=(",", ":")) + "\n"


def corpus_texts():
    return HOSTILE + demo_texts(12)


def make():
    """Trains the vocabularies anew (the trainer breaks ties in no fixed order, so the files
    differ from run to run) and writes everything."""
    training = demo_texts(400) + HOSTILE * 3
    files, built = {}, {}
    for family in FAMILIES:
        tok, config = build(family, training)
        built[family] = tok
        files[f"{family}/tokenizer.json"] = tok.to_str(pretty=False) + "\n"
        files[f"{family}/tokenizer_config.json"] = json.dumps(config, indent=1, ensure_ascii=False) + "\n"
    files["expected.json"] = expected_file(built, corpus_texts())
    return files


def check():
    """expected.json is what tokenizers makes, now, of the committed tokenizer.json files."""
    from tokenizers import Tokenizer
    built = {f: Tokenizer.from_file(str(OUT / f / "tokenizer.json")) for f in FAMILIES}
    committed = json.loads((OUT / "expected.json").read_text())
    fresh = json.loads(expected_file(built, corpus_texts()))
    if committed["corpus"] != fresh["corpus"]:
        print("expected.json: the corpus differs from make_tokenizer_fixtures.py's")
        return 1
    bad = [f for f in FAMILIES if committed["families"][f] != fresh["families"][f]]
    if bad:
        print("expected.json differs from what tokenizers " + fresh["generator"]["tokenizers"] +
              " makes of the committed tokenizer.json files for: " + ", ".join(bad))
        return 1
    print(f"tokenizer fixtures: expected.json is what tokenizers "
          f"{fresh['generator']['tokenizers']} makes of the {len(FAMILIES)} committed tokenizers")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--refresh-expected", action="store_true",
                        help="recompute expected.json (a changed corpus) from the committed "
                             "tokenizer.json files, without retraining them")
    args = parser.parse_args()
    try:
        import tokenizers  # noqa: F401
    except ImportError as e:
        print(f"skipped: tokenizers is not installed in {sys.executable} ({e}); "
              "scripts/python-env.sh installs it into .venv")
        return 77
    if args.check:
        return check()
    if args.refresh_expected:
        from tokenizers import Tokenizer
        built = {f: Tokenizer.from_file(str(OUT / f / "tokenizer.json")) for f in FAMILIES}
        (OUT / "expected.json").write_text(expected_file(built, corpus_texts()))
        print(f"wrote {OUT / 'expected.json'}")
        return 0
    files = make()
    for name, text in files.items():
        (OUT / name).parent.mkdir(parents=True, exist_ok=True)
        (OUT / name).write_text(text)
    print(f"wrote {len(files)} files to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
