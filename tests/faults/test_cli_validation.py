"""Issue 12, problem 6 (and the CLI half of 7): bad --device, --model, --out are refused before any work, with one
line naming the flag and exit code 2; WorkbenchError and OSError raised while running end the same way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import workbench.models
from workbench.cli import flag_names, main
from workbench.errors import InputError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_loading(monkeypatch):
    """Any model load fails loudly: a refused command must stop before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")
    monkeypatch.setattr(workbench.models, "load", refuse)


@pytest.fixture
def files(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "train.toml").write_text("name = 'x'\n")
    return tmp_path


def commands(f: Path, model: str) -> dict[str, list[str]]:
    """Each subcommand with the smallest valid arguments (model = a registered name or folder)."""
    return {
        "scan": ["scan", "--model", model, "--out", str(f / "scan")],
        "pattern": ["pattern", "--model", model, "--prompt", "w1 w2", "--head", "0.0", "--out", str(f / "p.html")],
        "episodic": ["episodic", "--model", model, "--out", str(f / "epi"), "--steps", "heads"],
        "niah": ["niah", "--model", model, "--out", str(f / "niah"), "--lengths", "64", "--depths", "50"],
        "sweep": ["sweep", "--model", model, "--task", "induction", "--out", str(f / "sw"), "--prompts", "2"],
        "train": ["train", "--config", str(f / "train.toml"), "--out", str(f / "train")],
        "trajectory": ["trajectory", str(f / "run"), "--report", str(f / "t.html")],
    }


WITH_MODEL = ("scan", "pattern", "episodic", "niah", "sweep")
FOLDER_OUT = {"scan": "--out", "episodic": "--out", "niah": "--out", "sweep": "--out", "train": "--out"}
FILE_OUT = {"pattern": "--out", "trajectory": "--report"}


def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("workbench: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def replace(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


@pytest.mark.parametrize("command", list(commands(Path("."), "x")))
def test_misspelt_device_is_refused_first(capsys, files, no_loading, command):
    argv = replace(commands(files, "smollm2-135m")[command], "--device", "gpu0")
    err = error_of(capsys, argv)
    assert "argument --device" in err and "'gpu0'" in err and "cpu, cuda" in err
    assert not any(p.name in ("scan", "epi", "niah", "sw", "train", "p.html", "t.html") for p in files.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", list(commands(Path("."), "x")))
def test_cuda_without_a_gpu_is_refused_first(capsys, files, no_loading, command):
    err = error_of(capsys, replace(commands(files, "smollm2-135m")[command], "--device", "cuda"))
    assert "argument --device" in err and "no CUDA GPU" in err and "use cpu" in err


@pytest.mark.parametrize("command", WITH_MODEL)
def test_a_folder_that_is_not_a_model_is_refused_first(capsys, files, no_loading, command):
    err = error_of(capsys, commands(files, str(files / "not-a-model"))[command])
    assert "argument --model" in err and "not a model folder (it has no config.json)" in err
    err = error_of(capsys, commands(files, "")[command])
    assert "argument --model" in err and "no model given" in err


@pytest.mark.parametrize("command", list(FOLDER_OUT) + list(FILE_OUT))
def test_an_unwritable_out_is_refused_first(capsys, files, no_loading, command):
    flag = FOLDER_OUT.get(command) or FILE_OUT[command]
    err = error_of(capsys, replace(commands(files, "smollm2-135m")[command], flag, "/proc/x"))
    assert f"argument {flag}" in err and "cannot write /proc/x" in err


@pytest.mark.parametrize("command", list(FOLDER_OUT))
def test_a_file_where_a_folder_is_needed(capsys, files, no_loading, command):
    err = error_of(capsys, replace(commands(files, "smollm2-135m")[command], "--out", str(files / "a-file")))
    assert "argument --out" in err and "is a file: give a folder" in err
    assert (files / "a-file").read_text() == "x"  # nothing overwritten


@pytest.mark.parametrize("command", list(FILE_OUT))
def test_a_folder_where_a_file_is_needed(capsys, files, no_loading, command):
    flag = FILE_OUT[command]
    err = error_of(capsys, replace(commands(files, "smollm2-135m")[command], flag, str(files)))
    assert f"argument {flag}" in err and "is a folder: give a file name" in err


def test_out_below_a_file(capsys, files, no_loading):
    err = error_of(capsys, replace(commands(files, "smollm2-135m")["scan"], "--out", str(files / "a-file" / "sub")))
    assert "argument --out" in err and "is a file, not a folder" in err


def test_trajectory_on_a_missing_folder_or_one_that_is_not_a_run(capsys, files):
    err = error_of(capsys, ["trajectory", str(files / "missing")])
    assert "argument run" in err and "no such folder" in err
    err = error_of(capsys, ["trajectory", str(files / "run")])
    assert "is not a training run" in err


def test_pattern_head_error_says_the_format(capsys, files, no_loading):
    err = error_of(capsys, replace(commands(files, "smollm2-135m")["pattern"], "--head", "LxHy"))
    assert "argument --head" in err and "'LxHy'" in err and "18.6" in err and "L18H6" in err
    err = error_of(capsys, ["niah", "--mask-heads", "L1H2,oops", "--out", str(files / "n")])
    assert "argument --mask-heads" in err and "L18H6" in err
    err = error_of(capsys, commands(files, "smollm2-135m")["sweep"] + ["--heads", "L1H2+L3"])
    assert "argument --heads" in err and "L18H6" in err


def test_numbers_are_checked_with_the_flag_the_user_typed(capsys, files, no_loading):
    err = error_of(capsys, commands(files, "smollm2-135m")["scan"] + ["--seq-len", "1"])
    assert "argument --seq-len: must be at least 2, got 1" in err
    err = error_of(capsys, commands(files, "smollm2-135m")["sweep"] + ["--prompts", "-3"])
    assert "argument --prompts: must be at least 1, got -3" in err
    err = error_of(capsys, commands(files, "smollm2-135m")["episodic"] + ["--batch-size", "0"])
    assert "argument --batch-size" in err


def test_library_errors_name_flags_not_python_arguments(capsys, files, monkeypatch, no_loading):
    import workbench.cli.sweep_cmd as sweep_cmd

    def run(args):
        raise InputError("repeated tokens need seq_len >= 2, n_prompts >= 1 and max_rows >= 1")
    monkeypatch.setattr(sweep_cmd, "run", run)
    err = error_of(capsys, commands(files, "smollm2-135m")["sweep"])
    assert "--seq-len >= 2, --prompts >= 1 and --max-rows >= 1" in err and "seq_len" not in err


def test_flag_names_leaves_other_words_alone():
    from workbench.cli import build_parser, _command_parser

    scan = _command_parser(build_parser(), "scan")
    assert flag_names("seq_len and batch and the n_repeats, x.seq_len", scan) == \
        "--seq-len and batch and the --repeats, x.seq_len"


def test_os_errors_while_running_are_one_line(capsys, files, monkeypatch, no_loading):
    import workbench.cli.scan_cmd as scan_cmd

    def run(args):
        raise PermissionError(13, "Permission denied", str(files / "scan" / "atlas.parquet"))
    monkeypatch.setattr(scan_cmd, "run", run)
    err = error_of(capsys, commands(files, "smollm2-135m")["scan"])
    assert err == f"workbench: error: Permission denied: {files / 'scan' / 'atlas.parquet'}"


@pytest.mark.slow  # a second interpreter imports torch + transformers: ~10 s idle, ~50 s on a loaded 2-core machine
def test_the_real_command_exits_2_with_one_line(files):
    """The same through `python -m workbench` (what a user runs): exit code 2, one line on stderr, nothing on stdout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WORKBENCH_PROGRESS": "0"}
    done = subprocess.run([sys.executable, "-m", "workbench", "pattern", "--device", "gpu0", "--prompt", "w1",
                           "--head", "0.0", "--out", str(files / "p.html")],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("workbench: error: argument --device")
    assert done.stdout == "" and not (files / "p.html").exists()
