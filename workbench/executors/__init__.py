"""Executors: one interface that computes the independent chunks of sweeps and NIAH grids, in this process or on Ray."""

from .base import Executor, LocalExecutor, ModelSpec, WorkerSpec
from .choose import EXECUTORS, get_executor
from .ray_executor import RayExecutor

__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "ModelSpec", "RayExecutor", "WorkerSpec", "get_executor"]
