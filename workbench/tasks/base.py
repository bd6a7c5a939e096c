"""Task batches: prompts plus the tokens a metric scores (teacher-forced targets, an optional foil)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch

from ..errors import InputError

DATA = Path(__file__).resolve().parents[2] / "data" / "tasks"


@dataclass
class TaskBatch:
    """Right-padded prompts and what to score.

    ``target_pos[b, t]``: a position whose next-token logits are scored; ``target_ids[b, t]``: the token
    they should predict (teacher forcing); ``target_mask`` marks real targets. ``foil_ids[b]``: the first
    token of an alternative answer (logit difference at the first target position), or None.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    target_pos: torch.Tensor
    target_ids: torch.Tensor
    target_mask: torch.Tensor
    foil_ids: torch.Tensor | None = None
    items: list = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def select(self, idx, trim: bool = True) -> "TaskBatch":
        """The rows ``idx`` (a list, range or bool mask) as a new batch, trimmed to their longest prompt if ``trim``."""
        idx = torch.as_tensor(list(idx) if not isinstance(idx, torch.Tensor) else idx, dtype=None)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        idx = idx.long()
        width = int(self.attention_mask[idx].sum(1).max()) if len(idx) and trim else self.n_tokens
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return replace(self, input_ids=self.input_ids[idx, :width], attention_mask=self.attention_mask[idx, :width],
                       target_pos=self.target_pos[idx], target_ids=self.target_ids[idx],
                       target_mask=self.target_mask[idx], foil_ids=pick(self.foil_ids),
                       items=[self.items[i] for i in idx.tolist()] if self.items else [])

    def tile(self, n: int) -> "TaskBatch":
        """The batch repeated ``n`` times along the batch axis (copy j = rows j*B .. (j+1)*B - 1)."""
        rep = lambda t: None if t is None else t.repeat(n, *([1] * (t.ndim - 1)))  # noqa: E731
        return replace(self, input_ids=rep(self.input_ids), attention_mask=rep(self.attention_mask),
                       target_pos=rep(self.target_pos), target_ids=rep(self.target_ids),
                       target_mask=rep(self.target_mask), foil_ids=rep(self.foil_ids), items=self.items * n)

    def keep_positions(self) -> torch.Tensor:
        """The sorted positions whose logits any metric needs (HF ``logits_to_keep``)."""
        return torch.unique(self.target_pos[self.target_mask])

    def model_inputs(self, device) -> dict:
        return {"input_ids": self.input_ids.to(device), "attention_mask": self.attention_mask.to(device)}


def gather_targets(logits: torch.Tensor, batch: TaskBatch, kept: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, V) logits at the batch's target positions, from full (B, N, V) logits or those at ``kept`` positions."""
    pos = batch.target_pos.to(logits.device)
    if kept is not None:
        lookup = torch.full((int(kept.max()) + 1,), 0, dtype=torch.long, device=logits.device)
        lookup[kept.to(logits.device)] = torch.arange(len(kept), device=logits.device)
        pos = lookup[pos.clamp(max=len(lookup) - 1)]
    return torch.gather(logits, 1, pos[..., None].expand(-1, -1, logits.shape[-1]))


@torch.no_grad()
def metric_values(subject, batch: TaskBatch, metrics, batch_size: int = 16) -> dict[str, "np.ndarray"]:
    """Per-prompt values of each metric (``fn(target_logits, batch) -> (B,)``) under the active hooks, in chunks."""
    keep = batch.keep_positions()
    out = {m.name: [] for m in metrics}
    for start in range(0, len(batch), batch_size):
        part = batch.select(range(start, min(start + batch_size, len(batch))), trim=False)
        logits = subject.model(**part.model_inputs(subject.device), use_cache=False,
                               logits_to_keep=keep.to(subject.device)).logits.float()
        target = gather_targets(logits, part, keep)
        for m in metrics:
            out[m.name].append(m(target, part).detach().double().cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def answer_batch(subject, prompts: Sequence, answers: Sequence[str], foils: Sequence[str] | None = None,
                 items: list | None = None) -> TaskBatch:
    """Prompt (text or ids) + answer tokens, teacher-forced: targets are the answer's tokens after the prompt."""
    if not prompts or len(prompts) != len(answers):
        raise InputError("give one answer per prompt (and at least one prompt)")
    rows, targets, foil_ids = [], [], []
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        p = subject.encode(prompt).tolist() if isinstance(prompt, str) else [int(t) for t in prompt]
        a = answer_ids(subject, answer)
        rows.append(p + a[:-1])
        targets.append((list(range(len(p) - 1, len(p) - 1 + len(a))), a))
        if foils is not None:
            f = answer_ids(subject, foils[i])
            if f[0] == a[0]:
                raise InputError(f"answer {answer!r} and foil {foils[i]!r} start with the same token: "
                                 "a logit difference needs different first tokens")
            foil_ids.append(f[0])
    width = max(len(r) for r in rows)
    subject.check_length(width)
    n_t = max(len(t[1]) for t in targets)
    pad = subject.tokenizer.pad_token_id if subject.tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    t_pos = torch.zeros((len(rows), n_t), dtype=torch.long)
    t_ids = torch.zeros((len(rows), n_t), dtype=torch.long)
    t_mask = torch.zeros((len(rows), n_t), dtype=torch.bool)
    for i, (row, (pos, a)) in enumerate(zip(rows, targets)):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
        t_pos[i, :len(pos)] = torch.tensor(pos)
        t_ids[i, :len(a)] = torch.tensor(a)
        t_mask[i, :len(a)] = True
    return TaskBatch(ids, mask, t_pos, t_ids, t_mask,
                     torch.tensor(foil_ids, dtype=torch.long) if foils is not None else None, list(items or []))


def answer_ids(subject, answer: str) -> list[int]:
    """Token ids of an answer continuation (no BOS); answers usually start with a space, e.g. ' Paris'."""
    ids = subject.tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"the answer {answer!r} has no tokens")
    return list(ids)


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL file (one JSON object per line; blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"task data {path} does not exist")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{n} is not valid JSON ({err.msg})") from None
    return out


@dataclass
class Task:
    """A task's kept items (those the model gets right with no intervention) and how they were chosen."""

    name: str
    batch: TaskBatch
    n_total: int
    settings: dict
    default_metric: str
    criterion: str  # what "gets right" means for this task

    def __post_init__(self):
        if len(self.batch) == 0:
            raise InputError(f"{self.name}: none of the {self.n_total} items passes the filter ({self.criterion}); "
                             "the model gets none right: use filter=False to keep them all, or another task")

    @property
    def n_kept(self) -> int:
        return len(self.batch)

    def summary(self) -> str:
        return (f"{self.name}: {self.n_kept} of {self.n_total} items kept ({self.criterion}); "
                f"default metric {self.default_metric}")

    def describe(self) -> dict:
        """JSON-ready settings, counts and the filter criterion (recorded in every sweep's sweep.json)."""
        return {"name": self.name, "settings": self.settings, "n_total": self.n_total, "n_kept": self.n_kept,
                "criterion": self.criterion, "default_metric": self.default_metric}
