"""``get_executor``: an executor by name ("local" or "ray"), the one place that knows every executor."""

from __future__ import annotations

from ..errors import InputError
from .base import Executor, LocalExecutor
from .ray_executor import RayExecutor

EXECUTORS = ("local", "ray")


def get_executor(executor: "str | Executor | None" = "local", **options) -> Executor:
    """An Executor from a name ('local', 'ray'; ``options`` go to its constructor) or an Executor itself."""
    if isinstance(executor, Executor):
        if options:
            raise InputError(f"options {sorted(options)} are given with an executor object: set them on the object")
        return executor
    name = "local" if executor is None else str(executor).strip().lower()
    if name == "local":
        if any(v is not None for v in options.values()):
            raise InputError(f"{', '.join(sorted(k for k, v in options.items() if v is not None))} "
                             "only apply to executor='ray'")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(**{k: v for k, v in options.items() if v is not None})
    raise InputError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")
