"""zerolora: LoRA fine-tuning of Llama-family models, ZeRO-3 sharded over MPI ranks, from Python.

The functions take the same arguments as the command line (``zerolora train --help``): the
keyword ``learning_rate=2e-4`` is the flag ``--learning_rate 2e-4``, with the same defaults and
the same checks. The engine is the C++ library the ``zerolora`` executable runs; the GIL is
released while it works.

    import zerolora
    results = zerolora.train(model_name_or_path="demo/stories260K-hf", output_dir="out",
                             data=[{"instruction": "...", "output": "..."}], num_train_epochs=1)

Under ``mpirun -np W python script.py`` every rank runs the same script and the training is
ZeRO-3 sharded across the W ranks, as ``mpirun -np W zerolora train`` would be.
"""

from ._zerolora import (
    ConfigError,
    DeviceError,
    Error,
    FormatError,
    InternalError,
    IoError,
    NumericalError,
    ResourceError,
    ShapeError,
    UnsupportedError,
    UsageError,
)
from .commands import estimate_memory, generate, inspect, main, merge
from .training import Run, TrainingArguments, process_rank, train

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DeviceError",
    "Error",
    "FormatError",
    "InternalError",
    "IoError",
    "NumericalError",
    "ResourceError",
    "Run",
    "ShapeError",
    "TrainingArguments",
    "UnsupportedError",
    "UsageError",
    "estimate_memory",
    "generate",
    "inspect",
    "main",
    "merge",
    "process_rank",
    "train",
]
