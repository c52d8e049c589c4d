"""The other commands as functions: what the command line prints, returned."""

import json
import os
import signal
import sys
import threading

from . import _zerolora
from .flags import to_flags


def generate(model_name_or_path, prompt, *, adapter=None, stream=None, **flags):
    """Continues ``prompt`` with the model (and a PEFT LoRA adapter directory); returns the
    generated text (special tokens left out). ``stream(piece)`` hears the text as it comes.
    Flags as ``zerolora generate``: max_new_tokens=64, temperature=0 (greedy), top_k, top_p,
    seed, template="raw" | "alpaca" | "chat", input, system, chat_template, chat_date, dtype,
    device, threads."""
    arguments = {"model_name_or_path": model_name_or_path, "prompt": prompt, "adapter": adapter,
                 **flags}
    answer = json.loads(_zerolora.generate(to_flags(arguments), stream))
    return answer["completion"]


def merge(model_name_or_path, adapter, output_dir, **flags):
    """Writes the model with the adapter folded into its weights (a Hugging Face model
    directory) to ``output_dir`` and returns that path. Flags as ``zerolora merge``: dtype,
    max_shard_size, threads."""
    arguments = {"model_name_or_path": model_name_or_path, "adapter": adapter,
                 "output_dir": output_dir, **flags}
    _zerolora.run_command(["merge"] + to_flags(arguments))
    return os.fspath(output_dir)


def estimate_memory(model_name_or_path=None, **flags):
    """Predicted memory per rank of a training run: ``{"total_bytes": N, "items": [{"name",
    "bytes"}, ...]}``. A model directory, or ``preset="llama2-70b"`` (llama2-7b/13b/70b,
    llama3-8b/70b, qwen2.5-7b/72b, mistral-7b); flags as ``zerolora estimate-memory``:
    world_size, per_device_train_batch_size, max_seq_length, lora_rank, bf16,
    gradient_checkpointing, ..."""
    arguments = {"model_name_or_path": model_name_or_path, **flags}
    return json.loads(_zerolora.estimate_memory(to_flags(arguments)))


def inspect(path):
    """What a model directory, an adapter directory or a .safetensors file holds:
    ``{"kind": "model" | "adapter" | "safetensors", "path", "config" | "adapter_config" |
    "metadata", "tensors": [{"name", "dtype", "shape", "bytes", "file"}]}``."""
    return json.loads(_zerolora.inspect(os.fspath(path)))


def main(argv=None):
    """The ``zerolora`` command (``pip install`` puts it on PATH; also ``python -m zerolora``).
    Returns the exit code."""
    args = sys.argv[1:] if argv is None else list(argv)
    sys.stdout.flush()
    # As the executable: Ctrl-C ends a command at once (`zerolora train` installs its own
    # handler: finish the step, save, exit). Python's handler would wait for the command to end.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        return _zerolora.cli_main(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
