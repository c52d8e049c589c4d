#!/usr/bin/env python3
"""What Transformers' chat templating makes of conversations, for zerolora's chat renderers.

tests/fixtures/chat_templates/<name>.jinja are the released chat_template strings of each
model family (README.md there says where each came from). Each conversation below is rendered
with Transformers' own renderer (transformers.utils.chat_template_utils.render_jinja_template,
what apply_chat_template(tokenize=False) runs), with the family's BOS / EOS strings — whole,
and without its last answer with add_generation_prompt=True, as for inference — into
tests/fixtures/chat_templates/expected.json, together with each template's fingerprint (what
zerolora's ChatTemplate::recognise compares: FNV-1a 64 of the text, CR LF read as LF, trailing
whitespace dropped).
--check: render again and fail when anything differs from the committed expected.json.
"""
import argparse
import json
import pathlib
import sys

from chat_date import fix_chat_date

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIR = ROOT / "tests" / "fixtures" / "chat_templates"

# name -> (bos_token, eos_token) as the family's tokenizer_config.json sets them
TOKENS = {
    "llama3": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama3.1": ("<|begin_of_text|>", "<|eot_id|>"),
    "llama3.2": ("<|begin_of_text|>", "<|eot_id|>"),
    "qwen2.5": (None, "<|im_end|>"),
    "chatml": ("<s>", "<|im_end|>"),
    "mistral": ("<s>", "</s>"),
    "mistral-v7": ("<s>", "</s>"),
    "llama2-chat": ("<s>", "</s>"),
    "zephyr": ("<s>", "</s>"),
}

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi, how can I help?"}],
    [{"role": "system", "content": "You are a pirate."},
     {"role": "user", "content": "Where is the treasure?"},
     {"role": "assistant", "content": "Arr, under the palm tree."}],
    [{"role": "system", "content": "Answer briefly."},
     {"role": "user", "content": "What is 2 + 2?"},
     {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And times 3?"},
     {"role": "assistant", "content": "12"}],
    [{"role": "user", "content": "  padded question \n"},
     {"role": "assistant", "content": "\n  padded answer  \n\n"},
     {"role": "user", "content": "\ttabbed\t"},
     {"role": "assistant", "content": "ok"}],
    [{"role": "user", "content": "Say <|im_end|> and </s> and [INST] literally. 你好 👋🏽"},
     {"role": "assistant", "content": "<|im_end|> </s> [INST] — done. مرحبا"}],
    [{"role": "system", "content": "  spaced system  "},
     {"role": "user", "content": "Multi\nline\n\ninput"},
     {"role": "assistant", "content": "Multi\nline\n\noutput"}],
    # A system message mid-conversation: most templates render it, Mistral v0.3's and Llama 2's
    # refuse it (null below).
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
     {"role": "system", "content": "Now answer in French."},
     {"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "Merci"}],
]
# strftime_now's date in templates that ask for it (Llama 3.2, Mistral v7), fixed so the file is
# stable.
DATE = "2026-01-02"


def fingerprint(text):
    data = text.encode("utf-8").rstrip(b" \t\n\r\f\v").replace(b"\r\n", b"\n")
    h = 14695981039346656037
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def render_or_none(conversation, template, bos, eos, add_generation_prompt):
    """Transformers' rendering, or None where the template raises."""
    import jinja2
    from transformers.utils.chat_template_utils import render_jinja_template
    try:
        rendered, _ = render_jinja_template(conversations=[conversation], chat_template=template,
                                            bos_token=bos, eos_token=eos,
                                            add_generation_prompt=add_generation_prompt)
        return rendered[0]
    except jinja2.exceptions.TemplateError:
        return None


def make():
    fix_chat_date(DATE)
    out = {"conversations": CONVERSATIONS, "date": DATE, "templates": {}}
    for name, (bos, eos) in TOKENS.items():
        template = (DIR / f"{name}.jinja").read_text()
        renders, prompts = [], []
        for conversation in CONVERSATIONS:
            renders.append(render_or_none(conversation, template, bos, eos, False))
            # For inference: everything before the last answer, and the assistant's header.
            prompts.append(render_or_none(conversation[:-1], template, bos, eos, True))
        out["templates"][name] = {"bos_token": bos or "", "eos_token": eos,
                                  "fingerprint": fingerprint(template), "renders": renders,
                                  "generation_prompts": prompts}
    import transformers
    out["generator"] = {"script": "tools/make_chat_fixtures.py",
                        "transformers": transformers.__version__}
    return json.dumps(out, ensure_ascii=False, indent=1) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        print(f"skipped: transformers is not installed in {sys.executable} ({e}); "
              "scripts/python-env.sh installs it into .venv")
        return 77
    text = make()
    expected = DIR / "expected.json"
    if args.check:
        old = json.loads(expected.read_text())
        new = json.loads(text)
        old.pop("generator", None)
        new.pop("generator", None)
        if old != new:
            print(f"{expected} differs from what Transformers renders now")
            return 1
        print(f"chat fixtures: {len(TOKENS)} templates x {len(CONVERSATIONS)} conversations as rendered")
        return 0
    expected.write_text(text)
    for name in TOKENS:
        print(f'    {{0x{json.loads(text)["templates"][name]["fingerprint"]}ull, "{name}"}},')
    return 0


if __name__ == "__main__":
    sys.exit(main())
