"""Issue 12, problems 1-3: sweep folders that protect results (settings hash, one writer, damaged files).

Each test reproduces the probe of the issue and asserts the new behaviour: a clear message (exit code 2
from the CLI), nothing lost, nothing mixed. The concurrency test runs two real processes.
"""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import tiny_llama
from workbench.cli import main
from workbench.errors import DamagedResultsError, FolderInUseError, InputError, WorkbenchWarning
from workbench.sweeps import load_sweep, run_sweep, single_heads
from workbench.tasks import induction_task

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "WORKBENCH_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
METRICS = ["loss", "accuracy"]


def _sweep_argv(model, out, *extra):
    return ["sweep", "--model", str(model), "--device", "cpu", "--task", "induction", "--prompts", "4",
            "--seq-len", "8", "--no-filter", "--metric", "loss", "--out", str(out), *extra]


def _no_time(df):
    return df.drop(columns="seconds")


# ------------------------------------------------------------------------ 1. parts tied to their settings
def test_1_parts_of_other_settings_are_never_mixed_in(tiny_folder, tmp_path, capsys):
    """Issue 12.1: `rm S/sweep.json` then a sweep with other heads and seed into S mixed seed-0 rows into a seed-7 sweep."""
    out = tmp_path / "S"
    assert main(_sweep_argv(tiny_folder, out, "--heads", "L0H0", "L0H1")) == 0
    capsys.readouterr()
    (out / "sweep.json").unlink()
    for resume in ([], ["--resume"]):  # parts without a manifest: refused, with or without --resume
        code = main(_sweep_argv(tiny_folder, out, "--heads", "L0H0", "L0H1", "L1H0", "--seed", "7", *resume))
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "sweep.json is missing" in err and "Traceback" not in err
    assert not (out / "sweep.json").exists()
    with pytest.raises(InputError, match="sweep.json is missing"):
        load_sweep(out)

    # load_sweep returns only rows made with the manifest's settings, even if other parts sit in parts/
    subject = tiny_llama(seed=1)
    a, b = tmp_path / "A", tmp_path / "B"
    cells = single_heads(subject)[:2]
    mine = run_sweep(subject, induction_task(subject, 4, 8, filter=False, seed=0), a, cells=cells, metrics=["loss"])
    other = run_sweep(subject, induction_task(subject, 4, 8, filter=False, seed=7), b, seed=7,
                      cells=cells + single_heads(subject)[4:5], metrics=["loss"])
    assert not np.allclose(mine["baseline"], other["baseline"][:2])  # the probe's 3.013 beside 2.951
    for part in (b / "parts").glob("part-*.parquet"):
        os.link(part, a / "parts" / f"part-{900000 + int(part.stem[5:])}.parquet")
    with pytest.warns(WorkbenchWarning, match="other settings"):
        got = load_sweep(a)
    pd.testing.assert_frame_equal(got, mine)
    meta = got.attrs["sweep"]
    assert meta["settings"]["seed"] == 0 and len(meta["settings_hash"]) == 16
    # resuming A counts only A's own parts as done: nothing is computed, A's rows come back unchanged
    files = sorted(p.name for p in (a / "parts").glob("part-*.parquet"))
    with pytest.warns(WorkbenchWarning, match="other settings"):
        again = run_sweep(subject, induction_task(subject, 4, 8, filter=False, seed=0), a, cells=cells,
                          metrics=["loss"], resume=True)
    pd.testing.assert_frame_equal(again, mine)
    assert sorted(p.name for p in (a / "parts").glob("part-*.parquet")) == files


# ------------------------------------------------------------------- 2. one writer at a time, two processes
GATED = """
import sys, time
from pathlib import Path
from tests.conftest import tiny_llama
from workbench.sweeps import Zero, run_sweep, single_heads
from workbench.tasks import induction_task

gate = Path(sys.argv[2])

class GatedZero(Zero):  # computes two cells, then waits for the test to open the gate
    calls = 0
    def specs(self, heads, rows, prompts):
        GatedZero.calls += 1
        deadline = time.time() + 120
        while GatedZero.calls > 2 and not gate.exists() and time.time() < deadline:
            time.sleep(0.02)
        return super().specs(heads, rows, prompts)

subject = tiny_llama(seed=1)
run_sweep(subject, induction_task(subject, 4, 8, filter=False), sys.argv[1], intervention=GatedZero(),
          metrics=["loss", "accuracy"], max_rows=4, chunk_cells=1)
"""


def test_2_a_second_writer_is_refused_and_nothing_is_lost(tiny_folder, tmp_path, capsys):
    """Issue 12.2: two sweeps into one folder both exited 0 with mixed rows; a --resume deleted the other's temp files."""
    out, gate = tmp_path / "S", tmp_path / "gate"
    writer = subprocess.Popen([sys.executable, "-c", GATED, str(out), str(gate)], cwd=ROOT, env=ENV)
    try:
        deadline = time.time() + 120
        while len(list((out / "parts").glob("part-*.parquet"))) < 2 and time.time() < deadline:
            assert writer.poll() is None, "the first sweep ended early"
            time.sleep(0.05)
        assert len(list((out / "parts").glob("part-*.parquet"))) == 2
        temp = out / "parts" / ".part-000003.parquet.x1y2z3.tmp"  # what a writer has in flight
        temp.write_bytes(b"half a part")
        before = {p.name: p.read_bytes() for p in (out / "parts").iterdir() if p.is_file()}
        manifest = (out / "sweep.json").read_bytes()

        subject = tiny_llama(seed=1)
        task = induction_task(subject, 4, 8, filter=False)
        for resume in (False, True):  # a second writer in this process, with and without resume
            with pytest.raises(FolderInUseError, match=f"pid {writer.pid}\\b"):
                run_sweep(subject, task, out, metrics=METRICS, resume=resume)
        # and from the CLI: one line, exit code 2, the holder's pid
        capsys.readouterr()
        assert main(_sweep_argv(tiny_folder, out, "--resume")) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"pid {writer.pid}" in err and "being written by another process" in err
        # the refused writers changed nothing: the running sweep's files and temp file are intact
        assert {p.name: p.read_bytes() for p in (out / "parts").iterdir() if p.is_file()} == before
        assert (out / "sweep.json").read_bytes() == manifest
    finally:
        gate.touch()
        assert writer.wait(timeout=300) == 0
    done = load_sweep(out)
    fresh = run_sweep(subject, task, tmp_path / "fresh", metrics=METRICS)
    pd.testing.assert_frame_equal(_no_time(done), _no_time(fresh), atol=1e-6)  # nothing lost, nothing mixed
    assert done.attrs["sweep"]["status"] == "complete" and temp.exists()
    # now that no writer is alive (the lock proves it), a resume removes the dead temp file and changes no row
    again = run_sweep(subject, task, out, metrics=METRICS, resume=True)
    assert not temp.exists()
    pd.testing.assert_frame_equal(again, done)


# ------------------------------------------------------------------------------ 3. damaged files
def test_3_a_damaged_part_is_set_aside_and_recomputed(tiny_folder, tmp_path, capsys):
    """Issue 12.3: a truncated part crashed every --resume (ArrowInvalid) and its cell was never recomputed."""
    subject = tiny_llama(seed=1)
    task = induction_task(subject, 4, 8, filter=False)
    out = tmp_path / "S"
    full = run_sweep(subject, task, out, metrics=METRICS, chunk_cells=2)
    parts = sorted((out / "parts").glob("part-*.parquet"))
    assert len(parts) == 4
    os.truncate(parts[1], 100)  # the probe
    data = bytearray(parts[2].read_bytes())  # and random damage inside a data page (caught by page checksums)
    data[40:80] = bytes(np.random.default_rng(0).integers(0, 256, 40, dtype=np.uint8))
    parts[2].write_bytes(bytes(data))
    with pytest.warns(WorkbenchWarning, match="cannot be read") as seen:
        partial = load_sweep(out)  # a reader skips them and says so
    assert len(seen) == 2 and len(partial) == len(full) - 8 and parts[1].exists()  # a reader moves nothing
    kept = {p.name: p.stat().st_mtime_ns for p in (parts[0], parts[3])}

    with pytest.warns(WorkbenchWarning, match="moved to .*damaged") as seen:
        resumed = run_sweep(subject, task, out, metrics=METRICS, chunk_cells=2, resume=True)
    assert len(seen) == 2
    pd.testing.assert_frame_equal(_no_time(resumed), _no_time(full), atol=1e-6)
    assert sorted(p.name for p in (out / "parts" / "damaged").iterdir()) == [parts[1].name, parts[2].name]
    assert {p.name: p.stat().st_mtime_ns for p in (parts[0], parts[3])} == kept  # intact parts untouched
    assert resumed.attrs["sweep"]["status"] == "complete"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a later resume: no warning, nothing recomputed
        n_parts = len(list((out / "parts").glob("part-*.parquet")))
        pd.testing.assert_frame_equal(run_sweep(subject, task, out, metrics=METRICS, resume=True), resumed)
        assert len(list((out / "parts").glob("part-*.parquet"))) == n_parts

    # the same from the CLI: the warning is one line, the sweep completes with the damaged cells recomputed
    cli = tmp_path / "C"
    assert main(_sweep_argv(tiny_folder, cli, "--heads", "L0H0", "L1H1")) == 0
    before = load_sweep(cli)
    (part,) = (cli / "parts").glob("part-*.parquet")
    os.truncate(part, 100)
    capsys.readouterr()
    assert main(_sweep_argv(tiny_folder, cli, "--heads", "L0H0", "L1H1", "--resume")) == 0
    err = capsys.readouterr().err
    assert err.startswith("workbench: warning: ") and "damaged" in err and err.count("\n") == 1, err
    pd.testing.assert_frame_equal(_no_time(load_sweep(cli)), _no_time(before), atol=1e-6)

    # a truncated manifest: an error that names the file and what to do, from Python and from the CLI
    text = (out / "sweep.json").read_text()
    (out / "sweep.json").write_text(text[:len(text) // 2])
    for call in (lambda: load_sweep(out), lambda: run_sweep(subject, task, out, metrics=METRICS, resume=True)):
        with pytest.raises(DamagedResultsError, match=r"sweep\.json is damaged \(not valid JSON.*Restore it"):
            call()
    capsys.readouterr()
    assert main(_sweep_argv(tiny_folder, out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "sweep.json is damaged" in err and err.count("\n") == 1


def test_ctrl_c_releases_the_folder_and_resume_completes_it(tmp_path):
    """What held before and must still hold: Ctrl-C mid-sweep keeps the finished parts; --resume completes the rest."""
    out, gate = tmp_path / "S", tmp_path / "never"
    writer = subprocess.Popen([sys.executable, "-c", GATED, str(out), str(gate)], cwd=ROOT, env=ENV,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list((out / "parts").glob("part-*.parquet"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("part-*.parquet")}
    writer.send_signal(signal.SIGINT)
    assert writer.wait(timeout=60) != 0 and len(kept) == 2
    subject = tiny_llama(seed=1)
    task = induction_task(subject, 4, 8, filter=False)
    assert json.loads((out / "sweep.json").read_text())["status"] == "running"
    done = run_sweep(subject, task, out, metrics=METRICS, max_rows=4, resume=True)  # the lock was released
    assert {n: (out / "parts" / n).stat().st_mtime_ns for n in kept} == kept
    fresh = run_sweep(subject, task, tmp_path / "fresh", metrics=METRICS)
    pd.testing.assert_frame_equal(_no_time(done), _no_time(fresh), atol=1e-6)


def test_old_one_file_per_cell_sweeps_are_read_but_not_continued(tiny_folder, tmp_path, capsys):
    """Folders from before the settings hash: load_sweep reads them (nothing of the user's is lost); writing into them is refused."""
    subject = tiny_llama(seed=1)
    task = induction_task(subject, 4, 8, filter=False)
    new = run_sweep(subject, task, tmp_path / "new", metrics=METRICS, cells=single_heads(subject)[:3])
    old = tmp_path / "old"
    (old / "parts").mkdir(parents=True)
    meta = {k: v for k, v in new.attrs["sweep"].items() if k not in ("format", "kind", "settings_hash")}
    (old / "sweep.json").write_text(json.dumps({**meta, "cells": ["L0H0", "L0H1"]}))
    for heads, rows in new.drop(columns="prompt_values").groupby("heads"):  # the old layout: a file per cell
        rows.to_parquet(old / "parts" / f"part-zero-{heads}.parquet", index=False)
    got = load_sweep(old)
    expected = new[new["heads"].isin(["L0H0", "L0H1"])].drop(columns="prompt_values").reset_index(drop=True)
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected, check_dtype=False)  # the manifest's cells
    with pytest.raises(InputError, match="older workbench.*still read it.*another --out"):
        run_sweep(subject, task, old, metrics=METRICS, resume=True)
    capsys.readouterr()
    assert main(_sweep_argv(tiny_folder, old, "--resume")) == 2
    assert "older workbench" in capsys.readouterr().err
