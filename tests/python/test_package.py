"""The Python package against the command line it wraps: the same data gives the same adapter,
bit for bit; callbacks, Ctrl-C and resume, errors, datasets, mpirun ranks, the other commands.

Run by ctest (tests/CMakeLists.txt) with the build tree's package on PYTHONPATH; ZEROLORA_BIN
names the `zerolora` executable of the same build and MPIEXEC its mpirun.
"""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import zerolora

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "demo" / "stories260K-hf"
RECORDS = json.loads((ROOT / "demo" / "instructions.json").read_text())[:96]
BIN = os.environ.get("ZEROLORA_BIN", str(ROOT / "build" / "zerolora"))

# A small run that exercises what could differ: dropout on, gradient accumulation, warmup,
# evaluation, every projection adapted.
FLAGS = dict(num_train_epochs=1, per_device_train_batch_size=4, gradient_accumulation_steps=2,
             max_seq_length=256, learning_rate=3e-3, warmup_steps=1, lora_dropout=0.1,
             lora_target_modules=["all-linear"], logging_steps=1, save_strategy="no",
             validation_split_percentage=10, eval_strategy="epoch", threads=1, seed=7)


def cli_train(output_dir, train_file, **flags):
    args = [BIN, "train", "--model_name_or_path", str(MODEL), "--output_dir", str(output_dir),
            "--train_file", str(train_file), "--disable_tqdm", "true"]
    args += zerolora.flags.to_flags(flags)
    done = subprocess.run(args, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done


def adapter_bytes(output_dir):
    return (Path(output_dir) / "adapter_model.safetensors").read_bytes()


def write_records(path, records):
    path.write_text(json.dumps(records, ensure_ascii=False))
    return path


def test_list_of_dicts_equals_the_command_line(tmp_path):
    cli_train(tmp_path / "cli", write_records(tmp_path / "data.json", RECORDS), **FLAGS)
    results = zerolora.train(model_name_or_path=MODEL, output_dir=tmp_path / "py", data=RECORDS,
                             log=None, **FLAGS)
    assert adapter_bytes(tmp_path / "py") == adapter_bytes(tmp_path / "cli")
    written = json.loads((tmp_path / "cli" / "train_results.json").read_text())
    assert results["train_loss"] == written["train_loss"]
    assert results["global_step"] == written["global_step"]
    assert json.loads((tmp_path / "py" / "train_results.json").read_text()) == results


def test_file_path_and_training_arguments(tmp_path):
    data = write_records(tmp_path / "data.json", RECORDS)
    cli_train(tmp_path / "cli", data, **FLAGS)
    arguments = zerolora.TrainingArguments(output_dir=str(tmp_path / "py"), **FLAGS)
    arguments.seed = FLAGS["seed"]
    zerolora.train(model_name_or_path=str(MODEL), data=data, args=arguments, log=None)
    assert adapter_bytes(tmp_path / "py") == adapter_bytes(tmp_path / "cli")


def test_the_callback_sees_every_logged_step(tmp_path):
    records, lines = [], []
    run = zerolora.Run(MODEL, tmp_path / "out", data=RECORDS, log=lines.append, **FLAGS)
    total = run.total_steps
    assert total >= 4 and run.first_step == 0
    run.train(callback=records.append)
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, total + 1))
    assert any("eval_loss" in r for r in records)
    assert "train_runtime" in records[-1]  # the summary comes last
    logged = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().split("\n") if line]
    assert records == logged
    assert any(line.startswith("data: ") for line in lines)
    assert any(line.startswith(f"step {total}/{total}: loss") for line in lines)


def test_ctrl_c_finishes_the_step_saves_and_resumes_exactly(tmp_path):
    flags = dict(FLAGS, save_strategy="steps", save_steps=100, validation_split_percentage=0,
                 eval_strategy="no")
    zerolora.train(MODEL, tmp_path / "whole", data=RECORDS, log=None, **flags)

    def interrupt_at_step_2(record):
        if record.get("step") == 2 and "loss" in record:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would

    stopped = zerolora.train(MODEL, tmp_path / "parts", data=RECORDS, log=None,
                             callback=interrupt_at_step_2, **flags)
    assert stopped["stopped"] and stopped["step"] == 2
    assert Path(stopped["checkpoint"]).name == "checkpoint-2"
    assert not (tmp_path / "parts" / "adapter_model.safetensors").exists()
    resumed = zerolora.Run(MODEL, tmp_path / "parts", data=RECORDS, log=None,
                           resume_from_checkpoint="last", **flags)
    assert resumed.first_step == 2
    resumed.train()
    assert adapter_bytes(tmp_path / "parts") == adapter_bytes(tmp_path / "whole")


def test_ctrl_c_while_the_engine_computes(tmp_path):
    # The signal arrives from another thread while the main thread is in the engine (the GIL
    # released): the run sees it at the step's end, finishes, saves and returns.
    flags = dict(FLAGS, validation_split_percentage=0, eval_strategy="no")
    zerolora.train(MODEL, tmp_path / "whole", data=RECORDS, log=None, **flags)

    def interrupt_soon(record):
        if record.get("step") == 1 and "loss" in record:
            threading.Timer(0.002, os.kill, (os.getpid(), signal.SIGINT)).start()

    stopped = zerolora.train(MODEL, tmp_path / "parts", data=RECORDS, log=None,
                             callback=interrupt_soon, **flags)
    assert stopped["stopped"] and 1 <= stopped["step"] < 4
    zerolora.train(MODEL, tmp_path / "parts", data=RECORDS, log=None,
                   resume_from_checkpoint="last", **flags)
    assert adapter_bytes(tmp_path / "parts") == adapter_bytes(tmp_path / "whole")


def test_sigterm_stops_and_saves_as_the_command_line_does(tmp_path):
    flags = dict(FLAGS, validation_split_percentage=0, eval_strategy="no")

    def terminate_at_step_1(record):
        if record.get("step") == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's notice

    stopped = zerolora.train(MODEL, tmp_path / "out", data=RECORDS, log=None,
                             callback=terminate_at_step_1, **flags)
    assert stopped["stopped"] and stopped["step"] == 1
    assert (tmp_path / "out" / "checkpoint-1").is_dir()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored


def test_a_callback_can_stop_and_its_exception_is_raised_after_saving(tmp_path):
    flags = dict(FLAGS, validation_split_percentage=0, eval_strategy="no")
    stopped = zerolora.train(MODEL, tmp_path / "a", data=RECORDS, log=None,
                             callback=lambda r: r.get("step") == 1, **flags)
    assert stopped["stopped"] and stopped["step"] == 1

    def fail(record):
        raise ValueError("from the callback")

    with pytest.raises(ValueError, match="from the callback"):
        zerolora.train(MODEL, tmp_path / "b", data=RECORDS, log=None, callback=fail, **flags)
    assert (tmp_path / "b" / "checkpoint-1").is_dir()


def cli_error(*args):
    done = subprocess.run([BIN, *args], capture_output=True, text=True)
    assert done.returncode != 0
    return done.stderr.strip().removeprefix("zerolora: ").removeprefix("error: ")


def test_errors_are_typed_and_carry_the_command_lines_messages(tmp_path):
    missing = tmp_path / "no-model"
    with pytest.raises(zerolora.IoError) as error:
        zerolora.train(missing, tmp_path / "out", data=RECORDS, log=None)
    assert str(error.value) == cli_error("train", "--model_name_or_path", str(missing),
                                         "--output_dir", str(tmp_path / "out2"), "--train_file",
                                         str(write_records(tmp_path / "d.json", RECORDS)))
    with pytest.raises(zerolora.UsageError, match="--learning_rate: must be a finite number"):
        zerolora.train(MODEL, tmp_path / "out", data=RECORDS, learning_rate=float("nan"))
    with pytest.raises(zerolora.UsageError, match="no_such_flag"):
        zerolora.train(MODEL, tmp_path / "out", data=RECORDS, no_such_flag=1)
    assert not (tmp_path / "out").exists()  # nothing written for refused flags
    broken = RECORDS[:3] + [{"instruction": "no output field"}]
    with pytest.raises(zerolora.FormatError,
                       match="the records given in Python: record 3 .*has no field 'output'"):
        zerolora.train(MODEL, tmp_path / "out", data=broken, log=None)
    with pytest.raises(TypeError, match="record 1 is a str"):
        zerolora.train(MODEL, tmp_path / "out", data=[RECORDS[0], "text"])
    assert issubclass(zerolora.IoError, zerolora.Error) and issubclass(zerolora.Error, RuntimeError)


def test_a_datasets_dataset_trains_as_its_records(tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets is not installed")
    dataset = datasets.Dataset.from_list(RECORDS)
    zerolora.train(MODEL, tmp_path / "list", data=RECORDS, log=None, **FLAGS)
    zerolora.train(MODEL, tmp_path / "dataset", data=dataset, log=None, **FLAGS)
    assert adapter_bytes(tmp_path / "dataset") == adapter_bytes(tmp_path / "list")
    with pytest.raises(TypeError, match="DatasetDict"):
        zerolora.train(MODEL, tmp_path / "x", data=datasets.DatasetDict(train=dataset))


def test_chat_records_from_python(tmp_path):
    chats = [{"messages": [{"role": "user", "content": r["instruction"]},
                           {"role": "assistant", "content": r["output"]}]} for r in RECORDS]
    data = write_records(tmp_path / "chat.json", chats)
    flags = dict(FLAGS, chat_template="chatml")
    cli_train(tmp_path / "cli", data, **flags)
    zerolora.train(MODEL, tmp_path / "py", data=chats, log=None, **flags)
    assert adapter_bytes(tmp_path / "py") == adapter_bytes(tmp_path / "cli")


# A module-level Run, never closed: the package closes it at exit, before MPI is finalised.
MPI_SCRIPT = """
import json, pathlib, sys, zerolora
rank, size = zerolora.process_rank()
records = json.load(open(sys.argv[2]))
flags = json.loads(sys.argv[3])
run = zerolora.Run(sys.argv[1], sys.argv[4], data=records, log=None, **flags)
run.train()
# A file per rank, not stdout: mpirun forwards the ranks' output in pieces that may merge.
(pathlib.Path(sys.argv[4]) / f"rank{rank}-of-{size}.done").write_text("")
"""


def adapter_tensors(output_dir):
    tensors = load_file(str(Path(output_dir) / "adapter_model.safetensors"))
    return {name: tensors[name].astype(np.float64) for name in sorted(tensors)}


def test_two_mpi_ranks_equal_one(tmp_path):
    mpiexec = os.environ.get("MPIEXEC")
    if not mpiexec:
        pytest.skip("MPIEXEC is not set (ctest sets it to CMake's mpirun)")
    script = tmp_path / "train.py"
    script.write_text(MPI_SCRIPT)
    data = write_records(tmp_path / "data.json", RECORDS)
    outputs = {}
    for world in (1, 2):  # the same global batch of 8: 4 x 2 accumulation x 1, 4 x 1 x 2 ranks
        flags = dict(FLAGS, bf16=False, gradient_accumulation_steps=2 // world)
        outputs[world] = tmp_path / f"world{world}"
        done = subprocess.run([mpiexec, "--allow-run-as-root", "--oversubscribe", "--bind-to",
                               "none", "-np", str(world), sys.executable, str(script), str(MODEL),
                               str(data), json.dumps(flags), str(outputs[world])],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert sorted(p.name for p in outputs[world].glob("*.done")) == [
            f"rank{r}-of-{world}.done" for r in range(world)]
    alone, together = adapter_tensors(outputs[1]), adapter_tensors(outputs[2])
    assert alone.keys() == together.keys()
    for name in alone:  # tests/tolerances.hpp kWorldSize.adapter: reduction order differs
        scale = np.abs(alone[name]).max()
        assert np.abs(together[name] - alone[name]).max() <= 1e-4 * scale, name
    results = [json.loads((outputs[w] / "train_results.json").read_text()) for w in (1, 2)]
    assert results[1]["world_size"] == 2
    assert results[1]["train_loss"] == pytest.approx(results[0]["train_loss"], rel=1e-5)


def test_generate_merge_estimate_and_inspect(tmp_path):
    zerolora.train(MODEL, tmp_path / "adapter", data=RECORDS, log=None, **FLAGS)
    adapter = tmp_path / "adapter"
    pieces = []
    text = zerolora.generate(MODEL, "Once upon a time", adapter=adapter, max_new_tokens=16,
                             stream=pieces.append)
    shown = subprocess.run([BIN, "generate", "--model", str(MODEL), "--prompt", "Once upon a time",
                            "--adapter", str(adapter), "--max_new_tokens", "16"],
                           capture_output=True, text=True, check=True).stdout
    assert shown == "Once upon a time" + text + "\n"
    assert "".join(pieces) == text and text
    merged = zerolora.merge(MODEL, adapter, tmp_path / "merged")
    assert zerolora.inspect(merged)["kind"] == "model"
    report = zerolora.inspect(adapter)
    assert report["kind"] == "adapter" and report["adapter_config"]["peft_type"] == "LORA"
    assert report["parameters"] == sum(np.prod(t["shape"]) for t in report["tensors"])
    estimate = zerolora.estimate_memory(preset="llama2-70b", world_size=8, bf16=True)
    printed = subprocess.run([BIN, "estimate-memory", "--preset", "llama2-70b", "--world_size", "8",
                              "--bf16", "true", "--json"], capture_output=True, text=True,
                             check=True).stdout
    assert estimate == json.loads(printed)
    with pytest.raises(zerolora.UsageError, match="one of --model_name_or_path and --preset"):
        zerolora.estimate_memory()


def test_the_command_line_entry_point():
    done = subprocess.run([sys.executable, "-m", "zerolora", "--version"], capture_output=True,
                          text=True)
    assert done.returncode == 0 and done.stdout.strip() == "zerolora 0.1.0"
    done = subprocess.run([sys.executable, "-m", "zerolora", "train", "--output_dir", "x"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "--model_name_or_path is required" in done.stderr
    assert zerolora.main(["inspect", str(ROOT / "no-such-dir")]) == 1
