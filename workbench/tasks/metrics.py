"""Per-prompt metrics over target logits: each maps (B, T, V) logits at a batch's target positions to (B,) values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InputError
from .base import TaskBatch


@dataclass(frozen=True)
class Metric:
    """A named per-prompt metric: ``fn(target_logits (B, T, V), batch) -> (B,)``; differentiable unless noted."""

    name: str
    fn: Callable[[torch.Tensor, TaskBatch], torch.Tensor]
    definition: str = ""

    def __call__(self, target_logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
        return self.fn(target_logits, batch)


def _logprobs(logits, batch):
    lp = logits.float().log_softmax(-1)
    return lp.gather(-1, batch.target_ids.to(lp.device)[..., None])[..., 0]  # (B, T)


def _mask(batch, device):
    return batch.target_mask.to(device).float()


def loss(logits, batch):
    """Mean cross-entropy (nats) over the prompt's target tokens."""
    m = _mask(batch, logits.device)
    return -(_logprobs(logits, batch) * m).sum(1) / m.sum(1).clamp(min=1)


def answer_logprob(logits, batch):
    """Summed log-probability of the target tokens (teacher-forced), e.g. a whole answer."""
    return (_logprobs(logits, batch) * _mask(batch, logits.device)).sum(1)


def answer_prob(logits, batch):
    """Probability of the first target token at the first target position."""
    return logits[:, 0].float().softmax(-1).gather(-1, batch.target_ids[:, :1].to(logits.device))[:, 0]


def accuracy(logits, batch):
    """Share of target tokens that are the argmax (not differentiable)."""
    m = _mask(batch, logits.device)
    hit = (logits.argmax(-1) == batch.target_ids.to(logits.device)).float()
    return (hit * m).sum(1) / m.sum(1).clamp(min=1)


def exact_match(logits, batch):
    """1 if every target token is the argmax given the correct prefix (= greedy decoding reproduces the answer), else 0."""
    m = batch.target_mask.to(logits.device)
    hit = (logits.argmax(-1) == batch.target_ids.to(logits.device)) | ~m
    return hit.all(1).float()


def logit_diff(logits, batch):
    """logit(first target token) - logit(foil token) at the first target position (e.g. memory vs context answer)."""
    if batch.foil_ids is None:
        raise InputError("logit_diff needs a foil answer per prompt; this task has none (use loss or answer_prob)")
    first = logits[:, 0].float()
    target = first.gather(-1, batch.target_ids[:, :1].to(first.device))[:, 0]
    foil = first.gather(-1, batch.foil_ids[:, None].to(first.device))[:, 0]
    return target - foil


METRICS = {m.name: m for m in (
    Metric("loss", loss, loss.__doc__), Metric("answer_logprob", answer_logprob, answer_logprob.__doc__),
    Metric("answer_prob", answer_prob, answer_prob.__doc__), Metric("accuracy", accuracy, accuracy.__doc__),
    Metric("exact_match", exact_match, exact_match.__doc__), Metric("logit_diff", logit_diff, logit_diff.__doc__),
)}
METRICS["niah_accuracy"] = Metric("niah_accuracy", exact_match, "NIAH accuracy: " + exact_match.__doc__)


def get_metric(metric) -> Metric:
    """A Metric from its name, a Metric, or any callable ``fn(target_logits, batch) -> (B,)`` (named after the function)."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric not in METRICS:
            raise InputError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)} or pass a callable")
        return METRICS[metric]
    if callable(metric):
        return Metric(getattr(metric, "__name__", "custom"), metric, (metric.__doc__ or "").strip())
    raise InputError(f"a metric is a name ({', '.join(METRICS)}), a Metric or a callable, got {type(metric).__name__}")
