"""The executor interface without a Ray cluster: the local executor, model specs, worker planning, clear errors.

Nothing here starts Ray: worker planning runs against a stand-in for ``ray.nodes()``, a missing Ray is
simulated, and the unreachable address is a closed port on 127.0.0.1 (refused at once).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import tiny_llama
from workbench.cli import main
from workbench.errors import ExecutorError, InputError
from workbench.executors import LocalExecutor, ModelSpec, RayExecutor, get_executor
from workbench.executors.ray_executor import parse_address
from workbench.sweeps import run_sweep
from workbench.tasks import induction_task


def _sweep_argv(model, out, *extra):
    return ["sweep", "--model", str(model), "--device", "cpu", "--task", "induction", "--prompts", "4", "--seq-len",
            "8", "--no-filter", "--heads", "L0H0", "L1H1", "--out", str(out), *extra]


def _one_line_error(capsys, argv, *needles) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("workbench: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------------------------------ interface
def test_local_executor_yields_every_chunk_in_order_with_one_worker():
    made, seen = [], []

    def make(subject):
        made.append(subject)
        return lambda chunk, progress: [progress(1) for _ in chunk] and sum(chunk)

    out = list(LocalExecutor().map("S", make, [[1, 2], [3], [4, 5, 6]], seen.append))
    assert out == [([1, 2], 3), ([3], 3), ([4, 5, 6], 15)]
    assert made == ["S"] and seen == [1] * 6  # one worker, progress after every item
    assert list(LocalExecutor().map("S", make, [])) == [] and made == ["S"]  # no chunks: no worker built


def test_get_executor_names_and_bad_options():
    assert isinstance(get_executor(), LocalExecutor) and isinstance(get_executor("local"), LocalExecutor)
    ray_executor = get_executor("ray", address="127.0.0.1:6379", workers=2)
    assert isinstance(ray_executor, RayExecutor) and ray_executor.workers == 2
    assert get_executor(ray_executor) is ray_executor
    with pytest.raises(InputError, match="unknown executor 'dask'.*local, ray"):
        get_executor("dask")
    with pytest.raises(InputError, match="workers only apply to executor='ray'"):
        get_executor("local", workers=2)
    for bad in ("localhost", "host:port", "10.0.0.5:0", "ray://10.0.0.5:10001", ":6379"):
        with pytest.raises(InputError, match="Ray address"):
            parse_address(bad)
    assert parse_address("auto") is None and parse_address("[::1]:6379") == ("::1", 6379)
    assert parse_address(" 10.0.0.5:6379 ") == ("10.0.0.5", 6379)
    with pytest.raises(InputError, match="workers must be at least 1"):
        RayExecutor(workers=0)


def test_model_spec_loads_by_name_folder_or_hub_id_and_refuses_in_memory_models(tiny_folder):
    def subject(name, source=""):
        return SimpleNamespace(name=name, source=source, dtype="torch.float32")

    assert ModelSpec.of(subject("smollm2-135m", "/cache/x")) == ModelSpec("smollm2-135m", "float32")
    assert ModelSpec.of(subject("tiny", str(tiny_folder))).model == str(Path(tiny_folder).resolve())
    assert ModelSpec.of(subject("Org/model", "Org/model")).model == "Org/model"
    with pytest.raises(InputError, match="built in memory.*save_pretrained"):
        ModelSpec.of(tiny_llama())
    spec = ModelSpec.of(subject("tiny", str(tiny_folder)))
    loaded = spec.load(device="cpu")
    assert loaded.n_layers == 2 and str(loaded.device) == "cpu"


def test_ray_executor_refuses_an_in_memory_model_before_writing_anything(tmp_path):
    pytest.importorskip("ray")
    subject = tiny_llama(seed=1)
    with pytest.raises(InputError, match="built in memory"):
        run_sweep(subject, induction_task(subject, 4, 8, filter=False), tmp_path / "S", executor="ray")
    assert not (tmp_path / "S").exists()


# ------------------------------------------------------------------------------------- worker planning
def _fake_ray(*nodes):
    return SimpleNamespace(nodes=lambda: [{"Alive": True, "Resources": r} for r in nodes]
                           + [{"Alive": False, "Resources": {"GPU": 8.0, "CPU": 64.0}}])


def test_workers_one_per_gpu_else_cpu_workers_that_share_the_cpus():
    gpus = _fake_ray({"CPU": 16.0, "GPU": 4.0}, {"CPU": 16.0, "GPU": 4.0})
    n, options, threads = RayExecutor().plan_workers(gpus, n_chunks=100)
    assert (n, options["num_gpus"], threads) == (8, 1, None) and options["max_restarts"] == 3
    assert RayExecutor().plan_workers(gpus, n_chunks=5)[0] == 5  # never more workers than chunks
    n, options, threads = RayExecutor(device="cpu").plan_workers(gpus, 100)  # GPUs ignored on request
    assert (n, options["num_cpus"], threads) == (8, 4, 4)
    with pytest.raises(ExecutorError, match="9 GPU workers asked for, but the Ray cluster has 8 GPUs"):
        RayExecutor(workers=9).plan_workers(gpus, 100)

    two = _fake_ray({"CPU": 2.0})  # this machine: --workers 2 -> two single-thread workers
    assert RayExecutor(workers=2).plan_workers(two, 100)[::2] == (2, 1)
    assert RayExecutor().plan_workers(two, 100)[::2] == (1, 2)  # default: one worker with both CPUs
    with pytest.raises(ExecutorError, match="3 CPU workers of 1 thread.*room for 2"):
        RayExecutor(workers=3).plan_workers(two, 100)
    uneven = _fake_ray({"CPU": 16.0}, {"CPU": 4.0})
    assert RayExecutor(workers=5, threads=4).plan_workers(uneven, 100)[0] == 5
    with pytest.raises(ExecutorError, match="room for 5"):
        RayExecutor(workers=6, threads=4).plan_workers(uneven, 100)
    with pytest.raises(ExecutorError, match="no CPUs or GPUs"):
        RayExecutor().plan_workers(_fake_ray({"memory": 1.0}), 100)


# ------------------------------------------------------------------------------------------ clear errors
def test_ray_missing_says_how_to_install(tiny_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    _one_line_error(capsys, _sweep_argv(tiny_folder, tmp_path / "S", "--executor", "ray"),
                    "needs the ray package", "pip install 'workbench[ray]'")
    _one_line_error(capsys, ["niah", "--model", str(tiny_folder), "--out", str(tmp_path / "N"), "--executor", "ray"],
                    "pip install 'workbench[ray]'")
    subject = tiny_llama(seed=1)
    with pytest.raises(ExecutorError, match=r"pip install 'workbench\[ray\]'"):
        run_sweep(subject, induction_task(subject, 4, 8, filter=False), tmp_path / "P", executor="ray")
    assert not (tmp_path / "S").exists() and not (tmp_path / "P").exists()


def test_an_unreachable_ray_address_is_named(tiny_folder, tmp_path, capsys):
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is initialised in this process: its connection would be used")
    with socket.socket() as s:  # a port on this machine that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    _one_line_error(capsys, _sweep_argv(tiny_folder, tmp_path / "S", "--executor", "ray", "--ray-address", address),
                    f"could not reach a Ray cluster at {address}", "ray start --head")
    assert not (tmp_path / "S").exists()  # refused before the sweep folder was made
    assert not ray.is_initialized()


def test_a_cluster_that_ray_would_dial_elsewhere_is_refused_with_the_fix(monkeypatch):
    """Ray dials a loopback address as this machine's network address: a loopback-only cluster is named, not waited on."""
    from workbench.executors import ray_executor

    with socket.socket() as server:  # a "cluster" listening on 127.0.0.1 only
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setattr(ray_executor, "ray_dials", lambda host: host)
        ray_executor.probe("127.0.0.1", port, f"127.0.0.1:{port}")  # reachable, and Ray would dial it as it is
        monkeypatch.setattr(ray_executor, "ray_dials", lambda host: "127.0.0.2")  # as Ray does on a networked machine
        with pytest.raises(ExecutorError, match=rf"listens on 127.0.0.1 only.*127.0.0.2.*{ray_executor.LOOPBACK_ONLY}=0"):
            ray_executor.probe("127.0.0.1", port, f"127.0.0.1:{port}")


def test_ray_flags_need_the_ray_executor(tiny_folder, tmp_path, capsys):
    _one_line_error(capsys, _sweep_argv(tiny_folder, tmp_path / "S", "--workers", "2"),
                    "--workers only apply with --executor ray")
    _one_line_error(capsys, _sweep_argv(tiny_folder, tmp_path / "S", "--ray-address", "auto", "--workers", "2"),
                    "--ray-address and --workers only apply with --executor ray")
    _one_line_error(capsys, _sweep_argv(tiny_folder, tmp_path / "S", "--executor", "ray", "--ray-address", "somewhere"),
                    "argument --ray-address", "HOST:PORT")
    _one_line_error(capsys, _sweep_argv(tiny_folder, tmp_path / "S", "--executor", "dask"), "argument --executor")
    assert not (tmp_path / "S").exists()
