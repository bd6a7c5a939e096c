"""Fact tasks from JSONL: knowledge conflict (memory vs counterfactual context) and temporal knowledge.

Both keep only the items the model gets right closed-book (greedy decoding reproduces the whole
answer: ``exact_match`` = 1 with teacher forcing), and say how many remain.

- ``knowledge_conflict`` (PH3, Jin et al. 2024, "Cutting Off the Head Ends the Conflict"): records
  ``{prompt, answer, counterfactual, context}``; the scored prompt is ``context + " " + prompt`` (the
  context states the counterfactual), the target is the memory answer o_m and the foil the context
  answer o_c, so ``logit_diff`` = logit(o_m) - logit(o_c) (PH3's sign: > 0 memory wins).
- ``temporal`` / ``temporal_invariant`` (Park et al. 2025, "Temporal Heads"): records ``{prompt, answer,
  kind, time}``; ``kind`` "temporal" holds time-conditioned facts ("In 1962, the president of the
  United States was"), "invariant" the time-invariant controls; default metric ``answer_logprob``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import DATA, Task, answer_batch, answer_ids, metric_values, read_jsonl
from .metrics import METRICS

CLOSED_BOOK = "greedy decoding reproduces the whole answer closed-book (exact_match = 1)"


def known(subject, prompts, answers) -> np.ndarray:
    """Bool per item: greedy decoding of ``prompt`` reproduces ``answer`` token for token (teacher-forced check)."""
    batch = answer_batch(subject, prompts, answers)
    return metric_values(subject, batch, [METRICS["exact_match"]])["exact_match"] == 1


def knowledge_conflict_task(subject, path: str | Path | None = None, filter: bool = True) -> Task:
    """Counterfactual-context prompts for facts the model knows closed-book; target o_m, foil o_c."""
    path = Path(path or DATA / "knowledge_conflict.jsonl")
    records = read_jsonl(path)
    distinct = [answer_ids(subject, r["answer"])[0] != answer_ids(subject, r["counterfactual"])[0] for r in records]
    records = [r for r, ok in zip(records, distinct) if ok]
    n_total = len(records) + distinct.count(False)
    if filter:
        keep = known(subject, [r["prompt"] for r in records], [r["answer"] for r in records])
        records = [r for r, k in zip(records, keep) if k]
    prompts = [f"{r['context']} {r['prompt']}" for r in records]
    batch = answer_batch(subject, prompts, [r["answer"] for r in records], [r["counterfactual"] for r in records],
                         items=records) if records else _empty(subject)
    criterion = (CLOSED_BOOK if filter else "no filter") + "; memory and context answers start with different tokens"
    return Task("knowledge_conflict", batch, n_total, {"kind": "knowledge_conflict", "path": str(path), "filter": filter},
                "logit_diff", criterion)


def temporal_task(subject, kind: str = "temporal", path: str | Path | None = None, filter: bool = True) -> Task:
    """Time-conditioned (``kind="temporal"``) or time-invariant (``"invariant"``) facts the model knows."""
    path = Path(path or DATA / "temporal.jsonl")
    records = [r for r in read_jsonl(path) if r.get("kind") == kind]
    n_total = len(records)
    if filter and records:
        keep = known(subject, [r["prompt"] for r in records], [r["answer"] for r in records])
        records = [r for r, k in zip(records, keep) if k]
    batch = (answer_batch(subject, [r["prompt"] for r in records], [r["answer"] for r in records], items=records)
             if records else _empty(subject))
    name = "temporal" if kind == "temporal" else f"temporal_{kind}"
    return Task(name, batch, n_total, {"kind": kind, "path": str(path), "filter": filter}, "answer_logprob",
                CLOSED_BOOK if filter else "no filter")


def _empty(subject):
    """A zero-row batch (Task then raises a clear error saying nothing passed the filter)."""
    batch = answer_batch(subject, [subject.encode("x").tolist()], [" x"])
    return batch.select(torch.zeros(1, dtype=torch.bool))
