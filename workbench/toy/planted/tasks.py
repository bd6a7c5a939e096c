"""Task adapters over the planted worlds: the inputs the real detectors take, built from held-out items.

- ``planted_task(subject, "temporal" | "temporal_invariant" | "knowledge_conflict" | "kv_retrieval")``: a
  ``workbench.tasks.Task`` (teacher-forced answer tokens) that ``workbench.sweeps.run_sweep`` and the memory-vs-context
  analysis take as they take the text tasks of the same names. ``knowledge_conflict`` follows
  ``knowledge_conflict_task``: target = the memorised attribute o_m, foil = the context's attribute o_c (PH3's sign),
  items kept when the model answers their closed-book twin right.
- ``needle_tests(items)``: held-out retrieval items as ``NeedleTest`` objects for ``workbench.retrieval.run_niah``
  (the queried pair is the needle, the other pairs the haystack).

The world comes from the training run: a Subject loaded from a checkpoint folder (``run/checkpoints/step-N``) finds
``run/train_config.json``; or pass the data config (``data=``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError
from ...stimuli.niah import Needle, NeedleTest
from ...tasks.base import Task, TaskBatch, metric_values
from ...tasks.metrics import METRICS
from ..tokenizer import N_SPECIAL, word
from .worlds import PlantedItems, world

TASKS = {"temporal": ("temporal_facts", "temporal"), "temporal_invariant": ("temporal_facts", "invariant"),
         "knowledge_conflict": ("conflict_facts", None), "kv_retrieval": ("kv_retrieval", "retrieval"),
         "kv_closed": ("kv_retrieval", "closed")}
CRITERION = "the model's greedy answer is right token for token (exact_match = 1)"


def run_data(source) -> dict:
    """The planted data config of a training run: from a Subject loaded from one of its checkpoints, a run or
    checkpoint folder, a TrainConfig, or the data dict itself."""
    if isinstance(source, dict):
        data = source
    elif hasattr(source, "data") and isinstance(source.data, dict):
        data = source.data
    else:
        folder = Path(getattr(source, "source", source) or "")
        found = next((p / "train_config.json" for p in (folder, *folder.parents[:2])
                      if (p / "train_config.json").is_file()), None)
        if found is None:
            raise InputError(f"no train_config.json in or above {folder}: pass the planted data config with data=")
        data = json.loads(found.read_text())["data"]
    world(data)  # checks that it is a planted kind
    return dict(data)


def held_out_items(source, seed: int = 0) -> PlantedItems:
    """Every held-out item of the run's world (seeded arrangement)."""
    return world(run_data(source)).all_test_items(seed)


def items_batch(items: PlantedItems, foil: bool = False) -> TaskBatch:
    """A TaskBatch scoring each item's answer tokens teacher-forced; with ``foil``, target = the memorised attribute
    and foil = the context's (conflict items), as in ``knowledge_conflict_task``."""
    ids = items.input_ids
    n, a = len(items), items.answer_len
    target_pos = items.answer_positions.expand(n, a).clone()
    target_ids = items.answers.clone()
    foil_ids = None
    if foil:
        if (items.foil < 0).any():
            raise InputError("a foil needs conflict items (groups context and memory)")
        context = torch.as_tensor(items.group == "context")
        answer = ids[:, -1]
        target_ids[:, 0] = torch.where(context, items.foil, answer)  # the memorised attribute o_m
        foil_ids = torch.where(context, answer, items.foil)  # the context's attribute o_c
    records = [{**m, "row": i} for i, m in enumerate(items.meta)]
    return TaskBatch(ids[:, :-1].clone(), torch.ones_like(ids[:, :-1]), target_pos, target_ids,
                     torch.ones((n, a), dtype=torch.bool), foil_ids, records)


def correct(subject, items: PlantedItems, batch_size: int = 64) -> np.ndarray:
    """Bool per item: greedy decoding reproduces its answer (teacher-forced exact match) under the active hooks."""
    batch = items_batch(items)
    return metric_values(subject, batch, [METRICS["exact_match"]], batch_size=batch_size)["exact_match"] == 1


def planted_task(subject, name: str, data: dict | None = None, seed: int = 0, filter: bool = True) -> Task:
    """A Task over the run's held-out items: temporal / temporal_invariant (time-conditioned / time-invariant facts),
    knowledge_conflict (both cues; target o_m, foil o_c), kv_retrieval / kv_closed (stored / memorised keys)."""
    if name not in TASKS:
        raise InputError(f"unknown planted task {name!r}: use one of {', '.join(TASKS)}")
    kind, group = TASKS[name]
    data = run_data(data if data is not None else subject)
    if data["kind"] != kind:
        raise InputError(f"task {name!r} needs a {kind} model, but this run was trained on {data['kind']}")
    items = world(data).all_test_items(seed)
    items = items.of(group) if group else items
    n_total = len(items)
    if filter:
        check = world(data).closed_book(items, seed) if name == "knowledge_conflict" else items
        items = items.select(correct(subject, check))
    conflict = name == "knowledge_conflict"
    batch = items_batch(items, foil=conflict)
    criterion = ((f"closed-book twin answered right: {CRITERION}" if conflict else CRITERION) if filter
                 else "no filter")
    settings = {"kind": kind, "group": group, "data": data, "seed": seed, "filter": filter, "split": "test"}
    return Task(name, batch, n_total, settings, "logit_diff" if conflict else "answer_logprob", criterion)


def needle_tests(items: PlantedItems) -> list[NeedleTest]:
    """Held-out retrieval items as NIAH tests: the queried pair is the needle, its value the answer span, and the
    prompt stops after the queried key (decoding produces the value, then EOS)."""
    items = items.of("retrieval")
    if items.kind != "kv_retrieval" or not len(items):
        raise InputError("needle tests need retrieval items of a kv_retrieval world")
    v = items.answer_len - 1  # answer = value tokens + EOS
    tests = []
    for row, src, meta in zip(items.input_ids, items.source_pos, items.meta):
        start, end = int(src[0]), int(src[v - 1]) + 1
        ids = row[:items.prompt_len].clone()
        words = [word(int(t) - N_SPECIAL) for t in row[start - 1:end]]
        needle = Needle(" ".join(words), f"{word(int(ids[-2]) - N_SPECIAL)} {words[0]}", " ".join(words[1:]),
                        "kv_retrieval")
        tests.append(NeedleTest(input_ids=ids, length=len(ids), depth=meta["depth"], actual_depth=meta["depth"],
                                needle=needle, needle_index=meta["slot"], needle_span=(start - 1, end),
                                answer_span=(start, end), haystack="kv-store"))
    return tests
