"""Issue 12, problem 4: NIAH folders follow the sweep folders' rules (refuse a used folder, resume, one writer).

The probe: `workbench niah ... --out N` run twice replaced the first run's answers.jsonl and mixed two
runs' settings and reports in one folder. Runs on a tiny random Llama with a byte-level tokenizer, so
the real NIAH prompts (RULER noise haystack, number needles) can be built without any download.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from workbench.cli import main
from workbench.retrieval.niah import run_conditions
from workbench.retrieval.niah_folder import load_niah

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "WORKBENCH_PROGRESS": "0", "OMP_NUM_THREADS": "1"}

HOLD_LOCK = """
import sys, time
from workbench.results import FolderLock
lock = FolderLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def _argv(model, out, *extra):
    return ["niah", "--model", str(model), "--device", "cpu", "--lengths", "300", "--depths", "0,100", "--needles",
            "1", "--max-new-tokens", "3", "--batch", "1", "--mask-heads", "L0H1", "--out", str(out), *extra]


def _files(out: Path) -> dict:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}


def _refused(capsys, argv, *needles) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_4_a_used_niah_folder_is_refused_resumed_and_never_overwritten(byte_model, tmp_path, capsys):
    out = tmp_path / "N"
    assert main(_argv(byte_model, out)) == 0
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 4 and {a["condition"] for a in answers} == {"intact", "masked"}
    meta = json.loads((out / "niah.json").read_text())
    assert meta["status"] == "complete" and meta["settings"]["grid"]["depths"] == [0.0, 100.0]
    parts = sorted((out / "parts").glob("part-*.parquet"))
    assert len(parts) == 2  # one per batch of answered tests (--batch 1), both conditions
    first = _files(out)

    # the probe: the same command again no longer replaces the first run's answers
    _refused(capsys, _argv(byte_model, out), "already holds a niah", "--resume")
    # one run's settings per folder: a resume with other settings is refused
    _refused(capsys, _argv(byte_model, out, "--depths", "50", "--resume"), "different grid")
    assert _files(out) == first

    # --resume of a finished run computes nothing and keeps every answer
    assert main(_argv(byte_model, out, "--resume")) == 0
    assert sorted((out / "parts").glob("part-*.parquet")) == parts
    assert [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()] == answers

    # a run that died after its first batch: --resume answers only the missing test, appending one part
    parts[1].unlink()
    assert len(load_niah(out)["intact"].table) == 1
    assert main(_argv(byte_model, out, "--resume")) == 0
    assert len(list((out / "parts").glob("part-*.parquet"))) == 2
    assert parts[0].read_bytes() == first[f"parts/{parts[0].name}"]  # the answered test was not touched
    assert [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()] == answers

    # the folder's answers and head scores equal an in-memory run of the same grid
    import workbench as wb
    from workbench.stimuli.niah import niah_grid

    subject = wb.load(str(byte_model), device="cpu")
    grid = niah_grid(subject, [300], [0, 100], n_needles=1, haystack="noise", seed=0)
    ref = run_conditions(subject, grid.tests, {"intact": [], "masked": [(0, 1)]}, record=["intact"],
                         max_new_tokens=3, batch_size=1)
    got = load_niah(out)
    for name in ("intact", "masked"):
        assert got[name].table["response"].tolist() == ref[name].table["response"].tolist()
        assert got[name].table["correct"].tolist() == ref[name].table["correct"].tolist()
    np.testing.assert_array_equal(got["intact"].head_scores, ref["intact"].head_scores)
    assert got["masked"].head_scores is None and got["masked"].settings["masked"] == [[0, 1]]


def test_4_a_second_niah_writer_is_refused_with_the_holders_pid(byte_model, tmp_path, capsys):
    out = tmp_path / "N"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in ([], ["--resume"]):
            _refused(capsys, _argv(byte_model, out, *extra), f"pid {holder.pid}", "being written by another process")
        assert _files(out) == {}  # nothing written, nothing deleted
    finally:
        holder.kill()
        holder.wait()
    assert main(_argv(byte_model, out)) == 0  # the holder is gone: the folder is free


def test_4_an_old_niah_folder_is_refused_not_overwritten(byte_model, tmp_path, capsys):
    out = tmp_path / "N"
    out.mkdir()
    (out / "answers.jsonl").write_text('{"condition": "intact", "response": "1234567"}\n')
    before = _files(out)
    for extra in ([], ["--resume"]):
        _refused(capsys, _argv(byte_model, out, *extra), "answers.jsonl", "older workbench", "another --out")
    assert _files(out) == before
