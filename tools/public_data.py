"""Where the fixture scripts find public test data that is not part of the repository (the
Alpaca records, the Llama-2 tokenizer): the folder the environment variable
ZEROLORA_SHARED_DATA names."""
import os
import pathlib


def shared_data():
    path = os.environ.get("ZEROLORA_SHARED_DATA")
    if not path or not (pathlib.Path(path) / "alpaca_en_demo.json").exists():
        raise SystemExit("set ZEROLORA_SHARED_DATA to a folder holding alpaca_en_demo.json and "
                         "llama2-tokenizer.model (the public records these fixtures are made from)")
    return pathlib.Path(path)
