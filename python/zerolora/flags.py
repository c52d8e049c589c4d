"""Keyword arguments to command-line flags: the C++ parser then applies the command line's own
names, defaults and checks, so the Python functions cannot drift from ``zerolora --help``."""

import numbers
import os


def to_flags(arguments):
    """``{"learning_rate": 2e-4, "bf16": False, "lora_target_modules": ["q_proj", "v_proj"]}``
    to ``["--learning_rate", "0.0002", "--bf16", "false", "--lora_target_modules", "q_proj",
    "v_proj"]``. ``None`` leaves a flag at its default."""
    flags = []
    for name, value in arguments.items():
        if value is None:
            continue
        flag = "--" + name
        if isinstance(value, bool):
            flags += [flag, "true" if value else "false"]
        elif isinstance(value, (list, tuple)):
            if not value:
                raise ValueError(f"{name}: an empty list; leave it out for the default")
            flags += [flag] + [text(name, v) for v in value]
        else:
            flags += [flag, text(name, value)]
    return flags


def text(name, value):
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):  # numpy's integers too
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))  # the shortest text that reads back the same number
    raise TypeError(f"{name}: expected a string, number, bool, path or list, got "
                    f"{type(value).__name__}")
