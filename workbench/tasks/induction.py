"""Induction task: BOS + random tokens repeated; score the next-token predictions inside the later repeats."""

from __future__ import annotations

import torch

from ..stimuli import repeated_random_tokens
from .base import Task, TaskBatch, metric_values
from .metrics import METRICS


def induction_batch(subject, n_prompts: int = 64, seq_len: int = 128, n_repeats: int = 2, seed: int = 0) -> TaskBatch:
    """Repeated random tokens (Olsson et al. 2022); targets: every token of the later repeats that an induction head can predict."""
    stim = repeated_random_tokens(subject, seq_len=seq_len, n_repeats=n_repeats, batch=n_prompts, seed=seed)
    ids = stim.input_ids
    pos = torch.arange(stim.offset + seq_len, ids.shape[1] - 1)  # position i predicts token i + 1, seen seq_len earlier
    b = ids.shape[0]
    target_pos = pos.expand(b, -1).clone()
    return TaskBatch(ids, torch.ones_like(ids), target_pos, ids[:, pos + 1], torch.ones_like(target_pos, dtype=torch.bool),
                     None, [{"seed": seed, "row": i} for i in range(b)])


def induction_task(subject, n_prompts: int = 64, seq_len: int = 128, n_repeats: int = 2, seed: int = 0,
                   min_accuracy: float = 0.5, filter: bool = True) -> Task:
    """The induction task, kept to prompts whose later-repeat tokens the model predicts with top-1 accuracy >= ``min_accuracy``."""
    batch = induction_batch(subject, n_prompts, seq_len, n_repeats, seed)
    criterion = f"top-1 accuracy on the repeated tokens >= {min_accuracy}" if filter else "no filter"
    if filter:
        acc = metric_values(subject, batch, [METRICS["accuracy"]])["accuracy"]
        batch = batch.select(torch.as_tensor(acc >= min_accuracy))
    settings = {"kind": "induction", "n_prompts": n_prompts, "seq_len": seq_len, "n_repeats": n_repeats, "seed": seed,
                "bos": True, "n_tokens": batch.n_tokens, "min_accuracy": min_accuracy if filter else None}
    return Task("induction", batch, n_prompts, settings, "loss", criterion)
