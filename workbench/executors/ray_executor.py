"""The Ray executor: chunks computed by Ray actors, each of which loads the model once; results come back to the driver.

Workers are actors (``ChunkActor``): one per GPU when the cluster has GPUs (``num_gpus=1``), else CPU workers
that each reserve ``threads`` CPUs and run torch with that many threads. Each loads the Subject from a
``ModelSpec`` (``wb.load``: a registered model is fetched into that node's cache if missing; a folder must exist
at the same path on every node) and builds its chunk worker from the ``WorkerSpec``, which is put into Ray's
object store once and shared by all actors. The driver keeps one chunk in flight per actor and hands the next
chunk to whichever actor finishes; results are yielded as they arrive, and the driver writes them.

Faults: an actor whose process dies (killed, out of memory, node lost) is restarted by Ray and its chunk is
retried (``max_restarts`` / ``max_task_retries``), so the chunk's result arrives once. An actor that dies more
often than that ends the run with ExecutorError (what was written is kept: resume). An error raised by the
chunk worker itself (a bad head, a model that does not load on a node) is raised on the driver as it was raised.

Without an address a private Ray instance is started on this machine (127.0.0.1, no dashboard, this machine's
CPUs) and shut down at the end; with ``address`` ("auto", or HOST:PORT of a running ``ray start --head``) the
driver joins that cluster and leaves it running. In a process where Ray is already initialised, that
connection is used and left open.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from typing import Any, Iterable, Iterator

from ..errors import ExecutorError, InputError, WorkbenchError
from .base import Executor, Make, ModelSpec, Progress, WorkerSpec

INSTALL = "pip install 'workbench[ray]'"
THREADS = 4  # torch threads per CPU worker when --workers is not given
CONNECT_TIMEOUT = 10.0  # seconds to reach HOST:PORT before ray.init is tried
# Ray's switch that keeps a loopback address as it is (ray._private.ray_constants): for a cluster bound to 127.0.0.1
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
START_TIMEOUT = 600.0  # seconds for the workers' processes to start (import torch, load the model) on a busy node
# a private instance: Ray's default of 60 s for a worker process to register is too short on a loaded machine
# (importing ray alone took 18 s at load 18 on 2 cores); the raylet then gives up on it and the actors wait forever
LOCAL_SYSTEM_CONFIG = {"worker_register_timeout_seconds": int(START_TIMEOUT)}


def import_ray():
    """The ``ray`` module, or ExecutorError saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ExecutorError(f"the Ray executor needs the ray package, which is not installed ({err}): "
                            f"{INSTALL}, or use the local executor") from None
    return ray


def parse_address(address: str | None) -> tuple[str, int] | None:
    """None or 'auto' -> None; 'HOST:PORT' -> (host, port); InputError for anything else."""
    if address is None or str(address).strip().lower() == "auto":
        return None
    text = str(address).strip()
    if text.startswith("ray://"):
        raise InputError(f"Ray address {address!r}: Ray Client addresses (ray://) are not supported: give the "
                         "cluster's GCS address HOST:PORT (`ray start --head` prints it; port 6379 by default)")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"Ray address {address!r}: give 'auto' (a cluster started on this machine) or HOST:PORT "
                         "of the head node, e.g. 10.0.0.5:6379")
    return host.strip("[]"), int(port)


class RaySession:
    """A connection to Ray for one run: joins ``address`` or starts a private local instance; closes what it opened."""

    def __init__(self, ray, address: str | None = None, num_cpus: int | None = None):
        self.ray, self.address, self.num_cpus = ray, address, num_cpus
        self.opened = False

    def __enter__(self) -> "RaySession":
        ray = self.ray
        if ray.is_initialized():
            return self
        if self.address is None:  # Ray's dashboard process starts anyway; on a busy machine it is late and Ray
            # logs an error about it, which changes nothing here (no dashboard is wanted): hence CRITICAL
            ray.init(address="local", num_cpus=self.num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     log_to_driver=False, logging_level=logging.CRITICAL, _node_ip_address="127.0.0.1",
                     dashboard_host="127.0.0.1", _system_config=LOCAL_SYSTEM_CONFIG)
        else:
            hostport = parse_address(self.address)
            if hostport is not None:
                probe(*hostport, self.address)
            try:
                ray.init(address=str(self.address).strip(), log_to_driver=False, logging_level=logging.WARNING)
            except (ConnectionError, TimeoutError, RuntimeError, ValueError) as err:
                raise ExecutorError(f"could not connect to a Ray cluster at {self.address} ({first_line(err)}): "
                                    "start one there with `ray start --head`, give its address (HOST:PORT, as "
                                    "`ray start` prints it), or leave out --ray-address to start Ray on this "
                                    "machine") from None
        self.opened = True
        return self

    def __exit__(self, *exc) -> None:
        if self.opened:
            self.ray.shutdown()
            self.opened = False


def probe(host: str, port: int, address: str) -> None:
    """Open a TCP connection to host:port, and to the address Ray itself will dial; ExecutorError naming the address if nothing answers."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise ExecutorError(f"could not reach a Ray cluster at {address} ({why}): check that `ray start --head` "
                            f"runs on {host} with port {port} and that this machine can reach it, or leave out "
                            "--ray-address to start Ray on this machine") from None
    dialed = ray_dials(host)
    if dialed != host:
        try:
            with socket.create_connection((dialed, port), timeout=CONNECT_TIMEOUT):
                pass
        except OSError:  # ray.init would retry this address for many minutes
            raise ExecutorError(f"the Ray cluster at {address} listens on {host} only, but Ray connects to a cluster on "
                                f"this machine through its network address {dialed}: start the cluster without "
                                "--node-ip-address 127.0.0.1 (`ray start --head`), or, for a cluster on this machine "
                                f"only, set {LOOPBACK_ONLY}=0 in the environment") from None


def ray_dials(host: str) -> str:
    """The host ``ray.init`` connects to for ``host``: Ray replaces a loopback address by this machine's network address."""
    try:
        from ray._private.services import resolve_ip_for_localhost
    except ImportError:  # another Ray version: nothing to check
        return host
    return resolve_ip_for_localhost(host)


def first_line(err: BaseException, last: bool = False) -> str:
    """The first (or last) line of an error's message, at most 200 characters (Ray's messages hold tracebacks)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()] or [type(err).__name__]
    text = lines[-1] if last else lines[0]
    return text if len(text) <= 200 else text[:197] + "..."


class ChunkActor:
    """A Ray actor: at its first chunk it loads the Subject from the shared spec and builds the chunk worker, then reuses them.

    The spec comes with every call as a reference to the driver's one copy in the object store (``[ref]``, not
    resolved by Ray), so an actor restarted after a crash loads it again when its chunk is retried.
    """

    def __init__(self, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(int(threads))
        self.worker = None

    def _build(self, shared: list) -> None:
        import ray

        spec: WorkerSpec = ray.get(shared[0])
        try:
            subject = spec.model.load(device="cuda" if ray.get_gpu_ids() else "cpu")
        except WorkbenchError as err:
            raise type(err)(f"Ray worker on {socket.gethostname()} cannot load {spec.model.model}: {err}") from None
        self.worker = spec.make(subject)

    def run(self, shared: list, chunk) -> tuple[Any, int]:
        """(the chunk's result, items done)."""
        if self.worker is None:
            self._build(shared)
        done = 0

        def count(n: int = 1) -> None:
            nonlocal done
            done += n

        return self.worker(chunk, count), done

    def pid(self) -> int:
        return os.getpid()


class RayExecutor(Executor):
    """Chunks on Ray actors: ``workers`` of them (default: one per GPU, else one per ``THREADS`` CPUs), restarted on failure.

    ``address``: None starts a private Ray instance on this machine; "auto" or "HOST:PORT" joins a running cluster.
    ``threads``: torch threads (and reserved CPUs) per CPU worker (default: the CPUs divided among the workers).
    ``device``: "auto" (GPU workers when the cluster has GPUs) or "cpu". ``max_retries``: restarts of a dead actor
    and retries of its chunk.
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int | None = None,
                 device: str = "auto", max_retries: int = 3):
        parse_address(address)
        for label, value in (("workers", workers), ("threads", threads)):
            if value is not None and int(value) < 1:
                raise InputError(f"{label} must be at least 1, got {value}")
        if device not in ("auto", "cpu"):
            raise InputError(f"device {device!r}: use 'auto' (GPU workers when the cluster has GPUs) or 'cpu'")
        if int(max_retries) < 0:
            raise InputError(f"max_retries must be >= 0, got {max_retries}")
        self.address, self.workers, self.threads = address, workers, threads
        self.device, self.max_retries = device, int(max_retries)
        self.worker_pids: list[int] = []  # the actors' first processes in the latest run (tests, monitoring)

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r}, workers={self.workers}, threads={self.threads})"

    def check(self, subject) -> None:
        """Ray is installed, the workers can load ``subject`` (by name, folder or hub id) and a HOST:PORT address answers."""
        import_ray()
        ModelSpec.of(subject)
        hostport = parse_address(self.address)
        if hostport is not None:
            probe(*hostport, self.address)

    # ------------------------------------------------------------------ planning
    def plan_workers(self, ray, n_chunks: int) -> tuple[int, dict, int | None]:
        """(number of actors, their Ray options, torch threads each) for this cluster; ExecutorError if they cannot fit."""
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        gpus = sum(int(r.get("GPU", 0)) for r in nodes)
        restart = dict(max_restarts=self.max_retries, max_task_retries=self.max_retries)
        if gpus and self.device == "auto":
            n = self.workers or gpus
            if n > gpus:
                raise ExecutorError(f"{n} GPU workers asked for, but the Ray cluster has {gpus} GPUs: use "
                                    f"--workers {gpus} or fewer")
            return max(1, min(n, n_chunks)), dict(num_gpus=1, **restart), None
        cpus = [int(r.get("CPU", 0)) for r in nodes]
        if not any(cpus):
            raise ExecutorError("the Ray cluster has no CPUs or GPUs to run workers on")
        if self.threads:
            threads = self.threads
        elif self.workers:
            threads = max(1, min(max(cpus), sum(cpus) // self.workers))
        else:
            threads = min(THREADS, max(cpus))
        room = sum(c // threads for c in cpus)
        n = self.workers or room
        if n > room or room == 0:
            raise ExecutorError(f"{n} CPU workers of {threads} thread(s) asked for, but the Ray cluster's nodes "
                                f"({', '.join(map(str, cpus))} CPUs) have room for {room}: use fewer --workers")
        return max(1, min(n, n_chunks)), dict(num_cpus=threads, **restart), threads

    # ------------------------------------------------------------------ running
    def map(self, subject, make: Make, chunks: Iterable, progress: Progress | None = None) -> Iterator[tuple[Any, Any]]:
        """Compute the chunks on Ray actors, yielded as they finish; ``progress(n)`` after each chunk's n items."""
        chunks = list(chunks)
        if not chunks:
            return
        ray = import_ray()
        spec = WorkerSpec(ModelSpec.of(subject), make)
        cpus = None if self.address is not None else min(os.cpu_count() or 1, self._cpus_wanted())
        with RaySession(ray, self.address, cpus):
            n, options, threads = self.plan_workers(ray, len(chunks))
            actor_class = ray.remote(ChunkActor)
            shared = [ray.put(spec)]  # one copy for every actor; a list, so Ray passes the reference itself
            actors = [actor_class.options(**options).remote(threads) for _ in range(n)]
            try:
                yield from self._dispatch(ray, actors, shared, chunks, progress)
            finally:
                for actor in actors:
                    ray.kill(actor, no_restart=True)

    def _cpus_wanted(self) -> int:
        """CPUs of a private local instance: what the workers reserve (all of this machine's when not given)."""
        if self.workers and self.threads:
            return self.workers * self.threads
        return os.cpu_count() or 1

    def _dispatch(self, ray, actors, shared, chunks, progress) -> Iterator[tuple[Any, Any]]:
        from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

        todo = deque(range(len(chunks)))
        pending = {}

        def submit(actor) -> None:
            if todo:
                i = todo.popleft()
                pending[actor.run.remote(shared, chunks[i])] = (actor, i)

        try:  # every actor's process is up
            self.worker_pids = ray.get([a.pid.remote() for a in actors], timeout=START_TIMEOUT)
        except GetTimeoutError:
            raise ExecutorError(f"Ray workers did not start within {START_TIMEOUT:.0f} s: the cluster may lack free "
                                "CPUs/GPUs for them (`ray status`), or its nodes are overloaded; nothing was "
                                "computed") from None
        except RayError as err:
            raise ExecutorError(f"Ray workers could not start ({first_line(err)}): every node needs this workbench "
                                f"installed (the same version as the driver: {INSTALL}) and the model") from None
        for actor in actors:
            submit(actor)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            actor, i = pending.pop(ref)
            try:
                result, done = ray.get(ref)
            except RayTaskError as err:
                cause = getattr(err, "cause", None)
                if isinstance(cause, BaseException) and not isinstance(cause, RayError):
                    raise cause from None
                raise ExecutorError(f"a Ray worker failed on chunk {i + 1} of {len(chunks)}: {first_line(err, True)}; "
                                    "results written so far are kept (resume)") from err
            except RayActorError as err:
                raise ExecutorError(f"a Ray worker died {self.max_retries + 1} times (its chunk {i + 1} of "
                                    f"{len(chunks)} was retried {self.max_retries} times): {first_line(err)}; "
                                    "results written so far are kept (resume)") from None
            except RayError as err:
                raise ExecutorError(f"Ray lost chunk {i + 1} of {len(chunks)}: {first_line(err)}; results written so "
                                    "far are kept (resume)") from None
            submit(actor)
            if progress is not None:
                progress(done)
            yield chunks[i], result
