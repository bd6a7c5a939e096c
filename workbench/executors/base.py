"""The executor interface: where the independent chunks of an analysis (sweep cells, NIAH test batches) are computed.

An analysis's driver (``run_sweep``, ``run_niah_grid``) plans chunks, then asks an executor for them::

    for chunk, result in executor.map(subject, make, chunks, progress):
        folder.append(result)          # the driver writes every result, whoever computed it

``make`` is a picklable factory, ``make(subject) -> worker``, and ``worker(chunk, progress) -> result`` computes
one chunk (``progress(n)`` after ``n`` items, for a progress bar). Everything the chunks share (the task's
prompts, the NIAH tests, the ablation, the metrics) travels inside ``make`` (e.g. ``functools.partial(ChunkWorker,
plan=plan)``), so an executor that computes elsewhere ships it once per worker, not once per chunk. Executors
yield ``(chunk, result)`` as chunks finish (in any order); a chunk whose result is yielded is computed exactly
once from the driver's point of view.

``LocalExecutor`` (the default) builds one worker from the driver's Subject and computes the chunks in order in
this process; ``workbench.executors.ray_executor.RayExecutor`` spreads them over Ray actors, each of which loads
the model itself from a ``ModelSpec`` (a registered name, an HF folder or a hub id, plus dtype).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..errors import InputError

Progress = Callable[[int], object]
Worker = Callable[[Any, "Progress | None"], Any]
Make = Callable[[Any], Worker]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How a worker process loads the driver's model: ``model`` (registered name, HF folder or hub id), dtype, device.

    ``device`` None: the worker's GPU when the executor gave it one, else the CPU.
    """

    model: str
    dtype: str = "float32"
    device: str | None = None

    @classmethod
    def of(cls, subject) -> "ModelSpec":
        """The spec that loads ``subject`` again; InputError for a Subject built in memory (``from_model``), which no other process can load."""
        from ..models import LOCAL, PRETRAINED, check_model_name

        dtype = str(subject.dtype).replace("torch.", "")
        if subject.name in PRETRAINED or subject.name in LOCAL:
            return cls(subject.name, dtype)
        source = str(subject.source or "")
        if source and Path(source).expanduser().is_dir():
            return cls(str(Path(source).expanduser().resolve()), dtype)
        if source:
            try:
                if check_model_name(source) == "hub":
                    return cls(source, dtype)
            except InputError:
                pass
        raise InputError(f"{subject.name} was built in memory (from_model), so worker processes cannot load it: save it "
                         "with subject.model.save_pretrained(DIR) and subject.tokenizer.save_pretrained(DIR), then "
                         "load it with wb.load(DIR) (every worker needs DIR), or use executor='local'")

    def load(self, device=None):
        """Load the Subject on ``device`` (this spec's device when given, else ``device``, else the default device)."""
        import torch

        from ..models import load

        return load(self.model, device=self.device or device, dtype=getattr(torch, self.dtype))


@dataclasses.dataclass(frozen=True)
class WorkerSpec:
    """What a remote worker needs, pickled once: the model to load and the factory of the chunk worker."""

    model: ModelSpec
    make: Make


class Executor(ABC):
    """Computes the chunks of one analysis; ``map`` yields ``(chunk, result)`` as they finish."""

    name = "executor"

    def check(self, subject) -> None:
        """Raise before any work if this executor cannot compute chunks for ``subject`` (nothing to check by default)."""

    @abstractmethod
    def map(self, subject, make: Make, chunks: Iterable, progress: Progress | None = None) -> Iterator[tuple[Any, Any]]:
        """``make(subject)(chunk, progress)`` for every chunk, yielded as ``(chunk, result)`` when finished."""


class LocalExecutor(Executor):
    """The in-process executor: one worker built from the driver's Subject computes the chunks in order."""

    name = "local"

    def map(self, subject, make: Make, chunks: Iterable, progress: Progress | None = None) -> Iterator[tuple[Any, Any]]:
        """Compute the chunks one after another in this process, progress after every item."""
        worker = None
        for chunk in chunks:
            worker = worker or make(subject)
            yield chunk, worker(chunk, progress)

    def __repr__(self) -> str:
        return "LocalExecutor()"
