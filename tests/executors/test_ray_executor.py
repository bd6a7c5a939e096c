"""Issue 14: the Ray executor computes sweeps and NIAH grids like the local one, and loses nothing to faults.

One Ray instance on this machine only (127.0.0.1, 2 CPUs, no dashboard, no log forwarding) is shared by
every test of this module and shut down at its end; the test checks that none of its processes is left.
Workers load a tiny random Llama saved into a temp folder (``tiny_folder``, ``byte_model``).
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="the Ray executor's tests need ray: pip install 'workbench[ray]'")
psutil = pytest.importorskip("psutil")

import workbench as wb  # noqa: E402
from workbench.cli import main  # noqa: E402
from workbench.executors import RayExecutor  # noqa: E402
from workbench.executors.ray_executor import LOCAL_SYSTEM_CONFIG, LOOPBACK_ONLY  # noqa: E402
from workbench.retrieval.niah_folder import run_niah_grid  # noqa: E402
from workbench.stimuli.niah import niah_grid  # noqa: E402
from workbench.sweeps import Zero, head_pairs, load_sweep, run_sweep  # noqa: E402
from workbench.tasks import induction_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# LOOPBACK_ONLY=0: the driver subprocess reaches the test cluster at 127.0.0.1 (Ray would dial this machine's
# network address instead, where the loopback-only cluster does not listen)
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "WORKBENCH_PROGRESS": "0", "OMP_NUM_THREADS": "1", LOOPBACK_ONLY: "0"}
METRICS = ["loss", "accuracy"]
HEADS = [(layer, head) for layer in range(2) for head in range(4)]  # tiny_folder: 2 layers x 4 heads


def _ray_processes() -> list:
    """This test process's descendants that belong to Ray (raylet, GCS, agents, workers)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            text = " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "ray" in text:
            found.append(p)
    return found


@pytest.fixture(scope="module")
def cluster():
    """A Ray instance on 127.0.0.1 with 2 CPUs for this module; its GCS address (HOST:PORT)."""
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             dashboard_host="127.0.0.1", object_store_memory=200 << 20, logging_level=logging.CRITICAL,
             _system_config=LOCAL_SYSTEM_CONFIG)
    try:
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:")
        yield address
    finally:
        ray.shutdown()
        deadline = time.time() + 120
        while _ray_processes() and time.time() < deadline:
            time.sleep(0.5)
        left = _ray_processes()
        for p in left:  # a Python helper still starting up on a busy machine can outlive the shutdown: end it here
            p.kill()
        core = [" ".join(p.cmdline())[:100] for p in left if "raylet" in p.name() or "gcs_server" in p.name()]
        assert not core, f"Ray's raylet or GCS outlived ray.shutdown(): {core}"


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    """(subject loaded from its folder, induction task, all 28 head pairs): 20+ cells for every sweep here."""
    subject = wb.load(str(tiny_folder), device="cpu")
    return subject, induction_task(subject, 4, 8, filter=False), head_pairs(HEADS)


@pytest.fixture(scope="module")
def local_rows(tiny, tmp_path_factory):
    """The reference: the sweep computed by the local executor."""
    subject, task, cells = tiny
    return run_sweep(subject, task, tmp_path_factory.mktemp("local") / "S", cells=cells, metrics=METRICS,
                     chunk_cells=3)


def _same_rows(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal rows (values to 1e-6, per-prompt values too), compute times aside."""
    pd.testing.assert_frame_equal(got.drop(columns=["seconds", "prompt_values"]),
                                  want.drop(columns=["seconds", "prompt_values"]), atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.stack(got["prompt_values"]), np.stack(want["prompt_values"]), atol=1e-6, rtol=0)


def _cells_on_disk(out: Path) -> pd.Series:
    """How many rows each cell has across all parts (every cell exactly once: one row per metric)."""
    parts = sorted((out / "parts").glob("part-*.parquet"))
    table = pd.concat([pq.read_table(p, columns=["cell"]).to_pandas() for p in parts], ignore_index=True)
    return table["cell"].value_counts()


def _exactly_once(out: Path, n_cells: int) -> None:
    counts = _cells_on_disk(out)
    assert len(counts) == n_cells and (counts == len(METRICS)).all(), counts[counts != len(METRICS)]


# ------------------------------------------------------------------------------------------ same rows
def test_ray_sweep_equals_local_and_resumes_across_executors(cluster, tiny, local_rows, tmp_path):
    subject, task, cells = tiny
    assert len(cells) >= 20
    executor = RayExecutor(workers=2)
    on_ray = run_sweep(subject, task, tmp_path / "R", cells=cells, metrics=METRICS, chunk_cells=3, executor=executor)
    _same_rows(on_ray, local_rows)
    _exactly_once(tmp_path / "R", len(cells))
    assert len(set(executor.worker_pids) | {os.getpid()}) == 3  # two worker processes, neither this one
    assert on_ray.attrs["sweep"]["settings_hash"] == local_rows.attrs["sweep"]["settings_hash"]

    # a Ray sweep resumed locally, and a local sweep resumed on Ray: parts lost in a crash are computed again
    local_start = tmp_path / "L"
    run_sweep(subject, task, local_start, cells=cells, metrics=METRICS, chunk_cells=3)
    for out, then in ((tmp_path / "R", "local"), (local_start, executor)):
        for part in sorted((out / "parts").glob("part-*.parquet"))[1::3]:  # as if the run had died before these
            part.unlink()
        resumed = run_sweep(subject, task, out, cells=cells, metrics=METRICS, chunk_cells=3, executor=then,
                            resume=True)
        _same_rows(resumed, local_rows)
        _exactly_once(out, len(cells))
        assert resumed.attrs["sweep"]["status"] == "complete"


# ------------------------------------------------------------------------------------- a worker killed
# pytest imports this file as a top-level module that Ray's workers cannot import: ship its classes by value
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class GatedZero(Zero):
    """Zero ablation whose cells starting in layer 1 wait for a gate file (so a test can kill a worker mid-chunk)."""

    def __init__(self, gate):
        self.gate = str(gate)

    def specs(self, heads, rows, prompts):
        deadline = time.time() + 300
        while min(layer for layer, _ in heads) == 1 and not os.path.exists(self.gate) and time.time() < deadline:
            time.sleep(0.05)
        return super().specs(heads, rows, prompts)


@pytest.mark.slow
def test_a_worker_killed_mid_sweep_loses_nothing(cluster, tiny, local_rows, tmp_path):
    """SIGKILL one of two workers while it computes a chunk: Ray restarts it, the chunk is retried, each cell lands once."""
    subject, task, cells = tiny
    out, gate = tmp_path / "S", tmp_path / "gate"
    executor = RayExecutor(workers=2)
    result, failure = {}, []

    def sweep():
        try:
            result["rows"] = run_sweep(subject, task, out, intervention=GatedZero(gate), cells=cells, metrics=METRICS,
                                       chunk_cells=3, executor=executor)
        except BaseException as err:  # noqa: BLE001 - reported by the test
            failure.append(err)

    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    try:
        # 28 pairs in chunks of 3: 7 chunks start in layer 0, then both workers wait in a layer-1 chunk
        deadline = time.time() + 300
        while len(list((out / "parts").glob("part-*.parquet"))) < 7 and time.time() < deadline and not failure:
            time.sleep(0.1)
        assert not failure, failure
        assert len(list((out / "parts").glob("part-*.parquet"))) == 7 and thread.is_alive()
        time.sleep(0.5)  # both workers are inside their gated chunk
        victim = executor.worker_pids[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.time() + 30
        while psutil.pid_exists(victim) and psutil.Process(victim).status() != psutil.STATUS_ZOMBIE \
                and time.time() < deadline:
            time.sleep(0.1)
    finally:
        gate.touch()
        thread.join(timeout=300)
    assert not thread.is_alive() and not failure, failure
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
    assert len(list((out / "parts").glob("part-*.parquet"))) == 10  # one part per chunk, none twice
    _exactly_once(out, len(cells))
    _same_rows(result["rows"], local_rows)


# ------------------------------------------------------------------------------------- the driver killed
HOLD = """
import sys, time
from workbench.results.folder import FolderWriter
from workbench.cli import main

write = FolderWriter.append

def append(self, rows):  # the driver stops for good after its second part: the test kills it there
    path = write(self, rows)
    if len(list(self.folder.parts.paths())) >= 2:
        print("written", flush=True)
        time.sleep(600)
    return path

FolderWriter.append = append
sys.exit(main(sys.argv[1:]))
"""


def _sweep_argv(model, out, address, *extra):
    return ["sweep", "--model", str(model), "--device", "cpu", "--task", "induction", "--prompts", "4", "--seq-len", "8",
            "--no-filter", "--metric", ",".join(METRICS), "--cells", "pairs", "--heads",
            *[f"L{layer}H{head}" for layer, head in HEADS], "--max-rows", "8", "--out", str(out), "--executor", "ray",
            "--ray-address", address, "--workers", "2", *extra]


@pytest.mark.slow
def test_driver_killed_then_resumed_on_ray(cluster, tiny_folder, tiny, local_rows, tmp_path, capsys):
    """`workbench sweep --executor ray` killed with SIGKILL after two parts, then `--resume` on Ray: nothing lost or twice."""
    out = tmp_path / "S"
    driver = subprocess.Popen([sys.executable, "-c", HOLD, *_sweep_argv(tiny_folder, out, cluster)], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, line = time.time() + 600, ""
        while line != "written" and time.time() < deadline:  # the CLI's lines, until the driver holds two parts
            ready, _, _ = select.select([driver.stdout], [], [], max(0.0, deadline - time.time()))
            line = driver.stdout.readline().strip() if ready else ""
            assert line or not ready, f"the driver ended early ({driver.wait()}): {driver.stderr.read()[-2000:]}"
        assert line == "written"
        driver.send_signal(signal.SIGKILL)
        assert driver.wait(timeout=60) == -signal.SIGKILL
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.stdout.close()
        driver.stderr.close()
    assert len(list((out / "parts").glob("part-*.parquet"))) == 2
    assert load_sweep(out).attrs["sweep"]["status"] == "running"

    capsys.readouterr()
    assert main(_sweep_argv(tiny_folder, out, cluster, "--resume")) == 0
    _exactly_once(out, len(tiny[2]))
    _same_rows(load_sweep(out), local_rows)
    assert load_sweep(out).attrs["sweep"]["status"] == "complete"


# ------------------------------------------------------------------------------------------------ NIAH
@pytest.mark.slow
def test_niah_grid_on_ray_gives_the_local_answers(cluster, byte_model, tmp_path):
    subject = wb.load(str(byte_model), device="cpu")
    grid = niah_grid(subject, [200, 300], [0, 50, 100], n_needles=1, haystack="noise", seed=0)
    conditions = {"intact": [], "masked": [(0, 1), (1, 2)]}
    options = dict(max_new_tokens=3, batch_size=2)
    local = run_niah_grid(subject, grid, tmp_path / "L", conditions, **options)
    on_ray = run_niah_grid(subject, grid, tmp_path / "R", conditions, executor=RayExecutor(workers=2), **options)
    assert set(on_ray) == set(local) == set(conditions)
    for name in conditions:
        pd.testing.assert_frame_equal(on_ray[name].table, local[name].table, atol=1e-6)
        assert len(on_ray[name].table) == len(grid.tests) == 6
    np.testing.assert_allclose(on_ray["intact"].head_scores, local["intact"].head_scores, atol=1e-6)
    assert (tmp_path / "R" / "answers.jsonl").read_text() == (tmp_path / "L" / "answers.jsonl").read_text()
    shutil.rmtree(tmp_path / "L")
