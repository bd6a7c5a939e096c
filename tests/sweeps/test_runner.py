"""The sweep runner: folder format, resume, and a sweep killed with SIGKILL that resumes with nothing lost."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import tiny_llama
from workbench.errors import InputError
from workbench.sweeps import head_pairs, kv_groups, layer_groups, load_sweep, run_sweep, single_heads
from workbench.sweeps.report import effect_matrix, sweep_report, top_cells
from workbench.sweeps.runner import COLUMNS
from workbench.tasks import induction_task

ROOT = Path(__file__).resolve().parents[2]

# the child builds the same tiny model and task, and sweeps slowly enough to be killed half-way
CHILD = """
import sys, time
from tests.conftest import tiny_llama
from workbench.sweeps import Zero, run_sweep, single_heads, head_pairs
from workbench.tasks import induction_task

class SlowZero(Zero):
    def specs(self, heads, rows, prompts):
        time.sleep(0.15)
        return super().specs(heads, rows, prompts)

subject = tiny_llama(seed=1, n_layers=3)
task = induction_task(subject, 4, 8, filter=False)
cells = single_heads(subject) + head_pairs(single_heads(subject)[0] + single_heads(subject)[5] + single_heads(subject)[9])
run_sweep(subject, task, sys.argv[1], intervention=SlowZero(), metrics=["loss", "accuracy"], cells=cells,
          resume=len(sys.argv) > 2, max_rows=4)
"""


def _cells(subject):
    heads = single_heads(subject)
    return heads + head_pairs(heads[0] + heads[5] + heads[9])


def _raw_rows(out: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in sorted((out / "parts").glob("part-*.parquet"))], ignore_index=True)


@pytest.mark.slow
def test_kill_9_mid_sweep_then_resume_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WORKBENCH_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(out)], cwd=ROOT, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "parts").glob("part-*.parquet"))) < 4:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("part-*.parquet")}
    subject = tiny_llama(seed=1, n_layers=3)
    n_cells = len(_cells(subject))
    assert 4 <= len(done_before) < n_cells, "the child was not killed mid-sweep"
    assert json.loads((out / "sweep.json").read_text())["status"] == "running"
    resumed = subprocess.run([sys.executable, "-c", CHILD, str(out), "resume"], cwd=ROOT, env=env, timeout=300)
    assert resumed.returncode == 0
    for name, mtime in done_before.items():  # finished cells were skipped, not recomputed
        assert (out / "parts" / name).stat().st_mtime_ns == mtime
    raw = _raw_rows(out)
    assert len(raw) == 2 * n_cells and not raw.duplicated(["cell", "metric"]).any()
    assert not list((out / "parts").glob(".*tmp"))
    # identical to an uninterrupted sweep in this process
    fresh = run_sweep(subject, induction_task(subject, 4, 8, filter=False), tmp_path / "fresh", intervention="zero",
                      metrics=["loss", "accuracy"], cells=_cells(subject), max_rows=4)
    got = load_sweep(out)
    assert got.attrs["sweep"]["status"] == "complete"
    pd.testing.assert_frame_equal(got.drop(columns="seconds"), fresh.drop(columns="seconds"), atol=1e-6)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    subject = tiny_llama(seed=4)
    task = induction_task(subject, 6, 10, filter=False)
    out = tmp_path_factory.mktemp("sweep")
    df = run_sweep(subject, task, out, intervention="mean", metrics=["loss", "accuracy"])
    return subject, task, out, df


def test_sweep_folder_format(swept):
    subject, task, out, df = swept
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["status"] == "complete" and meta["settings"]["task"]["n_kept"] == 6
    assert set(meta["baseline"]) == {"loss", "accuracy"}
    assert list(df.columns) == COLUMNS
    assert len(df) == 2 * subject.n_layers * subject.n_heads
    raw = _raw_rows(out)  # parts hold chunks of cells, every row tagged with the manifest's settings hash
    assert (raw["settings_hash"] == meta["settings_hash"]).all() and len(raw) == len(df)
    one = raw[raw["heads"] == "L1H2"]
    assert list(one["metric"]) == ["loss", "accuracy"]
    np.testing.assert_allclose(df["effect"], df["value"] - df["baseline"])
    per_prompt = np.stack(df["prompt_values"])  # the per-prompt values behind each mean and SEM
    assert per_prompt.shape == (len(df), 6)
    np.testing.assert_allclose(per_prompt.mean(1), df["value"])
    np.testing.assert_allclose(per_prompt.std(1, ddof=1) / np.sqrt(6), df["sem"])
    np.testing.assert_allclose(np.mean(meta["baseline_prompt_values"]["loss"]), meta["baseline"]["loss"])
    m = effect_matrix(df, subject.n_layers, subject.n_heads, "loss")
    assert m[1, 2] == pytest.approx(float(one.loc[one.metric == "loss", "effect"].iloc[0]))
    top = top_cells(df, 3, "loss")
    assert len(top) == 3 and top["effect"].abs().is_monotonic_decreasing
    html = sweep_report(out)
    assert html.is_file() and "plotly" in html.read_text()[:200000]


def test_rerun_needs_resume_and_same_settings(swept):
    subject, task, out, _ = swept
    with pytest.raises(InputError, match="--resume"):
        run_sweep(subject, task, out, intervention="mean", metrics=["loss", "accuracy"])
    with pytest.raises(InputError, match="different"):
        run_sweep(subject, task, out, intervention="zero", metrics=["loss", "accuracy"], resume=True)
    again = run_sweep(subject, task, out, intervention="mean", metrics=["loss", "accuracy"], resume=True)
    assert len(again) == 2 * subject.n_layers * subject.n_heads  # nothing left to do, nothing duplicated


def test_cell_builders():
    subject = tiny_llama(n_heads=4, n_kv=2)
    assert len(single_heads(subject)) == 8 and layer_groups(subject)[1] == ((1, 0), (1, 1), (1, 2), (1, 3))
    assert kv_groups(subject)[:2] == [((0, 0), (0, 1)), ((0, 2), (0, 3))]
    assert head_pairs([(0, 1), (1, 0), (0, 1)]) == [((0, 1), (1, 0))]


def test_bad_sweep_input(tmp_path):
    subject = tiny_llama()
    task = induction_task(subject, 4, 8, filter=False)
    with pytest.raises(InputError, match="out of range"):
        run_sweep(subject, task, tmp_path / "a", cells=[((9, 0),)])
    with pytest.raises(InputError, match="unknown intervention"):
        run_sweep(subject, task, tmp_path / "b", intervention="nope")
    with pytest.raises(InputError, match="unknown metric"):
        run_sweep(subject, task, tmp_path / "c", metrics=["nope"])
    with pytest.raises(InputError, match="no sweep"):
        load_sweep(tmp_path / "d")
