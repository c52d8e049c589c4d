"""Training from Python: ``train()`` in one call, or a ``Run`` for finer control."""

import atexit
import contextlib
import json
import os
import signal
import threading
import time
import weakref
from collections.abc import Iterable, Mapping

from . import _zerolora
from .flags import to_flags

_process_group = None
_open_runs = weakref.WeakSet()


def _group():
    """This process's place in the job: alone, or one rank of an ``mpirun`` (which owns MPI,
    initialised once per process and finalised at exit)."""
    global _process_group
    if _process_group is None:
        _process_group = _zerolora.ProcessGroup()
        atexit.register(_close_group)
    return _process_group


def _close_group():
    """At exit: the runs still held (a module-level Run, a kept traceback) are closed first, so
    that MPI is finalised while the interpreter still runs."""
    global _process_group
    for run in list(_open_runs):
        run.close()
    _process_group = None


def process_rank():
    """(rank, world size) of this process: (0, 1) alone, (r, W) under ``mpirun -np W``."""
    group = _group()
    return group.rank, group.size


class TrainingArguments(dict):
    """The training flags as an object, for code written around Hugging Face's
    ``TrainingArguments``: ``TrainingArguments(output_dir="out", learning_rate=2e-4)``, then
    ``train(model_name_or_path=..., args=arguments, data=...)``. Names are ``zerolora train``'s
    flags; attribute access reads and sets them."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


_MEMORY_LABEL = "the records given in Python"


def _records(data, what):
    """JSON Lines text of in-memory records, or None for a file path (given as the flag)."""
    if data is None or isinstance(data, (str, os.PathLike)):
        return None
    if type(data).__name__ == "DatasetDict":
        raise TypeError(f"{what}: a DatasetDict holds several splits; pass one, e.g. "
                        f"dataset['train']")
    if isinstance(data, Mapping):
        raise TypeError(f"{what}: expected a list of records (dicts) or a datasets.Dataset, "
                        f"got a dict; for columns, use datasets.Dataset.from_dict(...)")
    if isinstance(data, (bytes, bytearray)) or not isinstance(data, Iterable):
        raise TypeError(f"{what}: expected a file path, a list of records (dicts) or a "
                        f"datasets.Dataset, got {type(data).__name__}")
    lines = []
    for index, record in enumerate(data):  # a datasets.Dataset yields its rows as dicts
        if not isinstance(record, Mapping):
            raise TypeError(f"{what}: record {index} is a {type(record).__name__}, not a dict")
        try:
            lines.append(json.dumps(dict(record), ensure_ascii=False, allow_nan=False))
        except (TypeError, ValueError) as error:
            raise TypeError(f"{what}: record {index}: {error}") from None
    if not lines:
        raise ValueError(f"{what}: no records")
    return "\n".join(lines) + "\n"


def _arguments(args, flags):
    merged = {}
    if args is not None:
        if not isinstance(args, Mapping):
            raise TypeError("args: expected a zerolora.TrainingArguments or a dict of flags")
        merged.update(args)
    merged.update(flags)
    return merged


class _ConsoleLog:
    """Notes, and one line per logged step with the time left, to a function of one string
    (``print`` by default; ``None``: quiet)."""

    def __init__(self, write, total_steps, first_step):
        self.write = write
        self.total = total_steps
        self.first = first_step
        self.start = time.monotonic()

    def note(self, line):
        if self.write is not None:
            self.write(line)

    def step(self, record):
        if self.write is None or "loss" not in record or "step" not in record:
            return
        step = record["step"]
        done = step - self.first
        eta = ""
        if done > 0 and step < self.total:
            left = (time.monotonic() - self.start) / done * (self.total - step)
            eta = f", {int(left) // 60}:{int(left) % 60:02d} left"
        loss = record["loss"]  # null: every step of the window was skipped as non-finite
        loss = "nan" if loss is None else f"{loss:.4f}"
        self.write(f"step {step}/{self.total}: loss {loss}, lr {record.get('lr') or 0:.3g}, "
                   f"{record.get('tokens_per_second') or 0:.0f} tokens/s{eta}")


@contextlib.contextmanager
def _stop_on_signals(stop):
    """As ``zerolora train`` does: SIGTERM (a scheduler's notice) and SIGUSR1 finish the step and
    save, where they would otherwise kill the process. SIGINT is Python's KeyboardInterrupt,
    which the run catches itself."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGTERM, signal.SIGUSR1):
            if signal.getsignal(number) == signal.SIG_DFL:
                previous[number] = signal.signal(number, lambda *_: stop())
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class Run:
    """A training run: set up when made (model, data, LoRA, the schedule, a resume), trained by
    ``train()``. The arguments are ``train()``'s, without the callback.

        run = zerolora.Run(model_name_or_path=..., output_dir=..., data=records)
        print(run.total_steps)
        results = run.train(callback=lambda metrics: print(metrics))

    Raises ``zerolora.UsageError`` for flags the command line would refuse, and the library's
    other errors (``IoError``, ``FormatError``, ...) with the command line's messages.
    """

    def __init__(self, model_name_or_path=None, output_dir=None, *, data=None, eval_data=None,
                 args=None, log=print, **flags):
        arguments = _arguments(args, flags)
        if model_name_or_path is not None:
            arguments["model_name_or_path"] = model_name_or_path
        if output_dir is not None:
            arguments["output_dir"] = output_dir
        if arguments.get("resume_from_checkpoint") is False:  # as Hugging Face: no resume
            del arguments["resume_from_checkpoint"]
        train_records = _records(data, "data")
        eval_records = _records(eval_data, "eval_data")
        if data is not None and train_records is None:
            arguments["train_file"] = data
        if eval_data is not None and eval_records is None:
            arguments["validation_file"] = eval_data
        self._log_function = log
        rank, _ = process_rank()
        self._leader = rank == 0
        self._log = _ConsoleLog(log if self._leader else None, 0, 0)
        self._run = _zerolora.Run(_group(), to_flags(arguments), train_records, eval_records,
                                  _MEMORY_LABEL, self._log.note)
        _open_runs.add(self)
        if self.ignored_flags:
            self._log.note("warning: these flags mean nothing to zerolora and are ignored: " +
                           ", ".join(self.ignored_flags))
        self.output_dir = arguments.get("output_dir")

    @property
    def total_steps(self):
        """Optimizer steps of the whole run."""
        return self._run.total_steps

    @property
    def first_step(self):
        """0, or the step a resumed run continues from."""
        return self._run.first_step

    @property
    def ignored_flags(self):
        """Hugging Face flags that mean nothing to zerolora (a warning lists them)."""
        return list(self._run.ignored_flags)

    def close(self):
        """Frees the model and data now, rather than when the Run is collected (every rank)."""
        self._run.close()

    def stop(self):
        """Asks the run to stop after the current step and save a checkpoint (from a callback,
        or another thread)."""
        self._run.request_stop()

    def train(self, callback=None):
        """Trains to the last step and returns ``train_results.json``'s content.

        ``callback(metrics)`` is called on rank 0 with every record ``metrics.jsonl`` gets: each
        logged step (step, epoch, loss, learning_rate, grad_norm, tokens_per_second, ...), each
        evaluation (eval_loss, ...) and the final summary. Returning True stops the run.

        A run stopped early (the callback's True, ``stop()``, Ctrl-C) finishes its step, writes a
        checkpoint and returns ``{"stopped": True, "step": N, "checkpoint": path}``; continue
        with ``resume_from_checkpoint="last"``. An exception the callback raises stops the run
        the same way and is raised again once the checkpoint is written.
        """
        log = _ConsoleLog(self._log.write, self.total_steps, self.first_step)

        def on_metrics(text):
            record = json.loads(text)
            log.step(record)
            if callback is not None:
                return bool(callback(record))
            return False

        with _stop_on_signals(self.stop):
            answer = json.loads(self._run.train(on_metrics, log.note))
        saved = answer["saved"]
        if not answer["stopped"]:
            return saved
        log.note(f"{'interrupted' if answer['interrupted'] else 'stopped'} after step "
                 f"{answer['step']}: checkpoint written; continue with "
                 f"resume_from_checkpoint='last'")
        return {"stopped": True, "step": answer["step"], **saved}


def train(model_name_or_path=None, output_dir=None, *, data=None, eval_data=None, args=None,
          callback=None, log=print, **flags):
    """LoRA fine-tuning, as ``zerolora train``; returns ``train_results.json``'s content.

    model_name_or_path, output_dir, and every other ``zerolora train`` flag as a keyword of the
    same name and default (``num_train_epochs=2``, ``lora_rank=8``, ``bf16=False``,
    ``lora_target_modules=["q_proj", "v_proj"]``, ``resume_from_checkpoint="last"``, ...), or
    gathered in ``args`` (a ``zerolora.TrainingArguments`` or a dict).
    data: the training records: a file path (as ``train_file``), a list of dicts (Alpaca
        instruction/input/output, text, or chat messages, as in a file), or a
        ``datasets.Dataset`` with those columns.
    eval_data: validation records, the same ways (as ``validation_file``).
    callback: called with each metrics record (see ``Run.train``); True stops the run.
    log: where notes and progress lines go (``print``; ``None`` for none).
    """
    run = Run(model_name_or_path, output_dir, data=data, eval_data=eval_data, args=args, log=log,
              **flags)
    return run.train(callback=callback)
