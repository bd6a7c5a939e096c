"""Tasks for causal sweeps: prompts plus scored targets, filtered to the items the model gets right."""

from ..errors import InputError
from .base import Task, TaskBatch, answer_batch, gather_targets, metric_values, read_jsonl
from .facts import known, knowledge_conflict_task, temporal_task
from .induction import induction_batch, induction_task
from .metrics import METRICS, Metric, get_metric

TASKS = {"induction": induction_task, "knowledge_conflict": knowledge_conflict_task, "temporal": temporal_task,
         "temporal_invariant": lambda subject, **kw: temporal_task(subject, kind="invariant", **kw)}


def build_task(subject, name: str, **options) -> Task:
    """A registered task by name (induction, knowledge_conflict, temporal, temporal_invariant) with its options."""
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}: use one of {', '.join(TASKS)}")
    return TASKS[name](subject, **options)


__all__ = ["METRICS", "Metric", "TASKS", "Task", "TaskBatch", "answer_batch", "build_task", "gather_targets",
           "get_metric", "induction_batch", "induction_task", "knowledge_conflict_task", "known", "metric_values",
           "read_jsonl", "temporal_task"]
