"""What a sweep does to a cell's heads: zero, mean, resample, query-zeroing, or patching from a source run.

Each ablation turns (cell heads, batch rows, prompt indices) into intervention specs restricted to
those rows, so one forward pass can carry a different cell in each copy of the prompts. For attribution
screening (``screen.py``) each also says what it puts in place of every head's output z (or query, for
query-side ablations) of a layer: ``replacement``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError
from ..interventions import ReplaceHead, ZeroHead, ZeroQuery
from ..models.attention import AttentionHook, hooks_active
from ..progress import progress

Head = tuple[int, int]


class Ablation:
    """Base: ``prepare`` collects what the replacement needs; ``specs`` builds the per-row specs of one cell."""

    name = "?"
    definition = ""
    side = "z"  # what the ablation replaces: "z" (head outputs before o_proj) or "query" (post-RoPE queries)

    def prepare(self, subject, batch, layers: set[int], chunk: int) -> None:
        pass

    def specs(self, heads: tuple[Head, ...], rows: range, prompts: torch.Tensor) -> list:
        raise NotImplementedError

    def replacement(self, layer: int, current: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """What the ablation puts in place of ``current`` for every head of ``layer`` on the prompts ``prompts``:
        z (B, N, H, D) for ``side`` "z", the query (B, H, N, D) for "query"; after ``prepare``."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "definition": self.definition}


class Zero(Ablation):
    name = "zero"
    definition = "head output z (before o_proj) set to 0 at every position"

    def specs(self, heads, rows, prompts):
        return [ZeroHead(heads, rows=rows)]

    def replacement(self, layer, current, prompts):
        return torch.zeros_like(current)


class ZeroQueries(Ablation):
    name = "query"
    definition = "head query zeroed: uniform attention over the visible prefix (Wu et al. 2024's masking)"
    side = "query"

    def specs(self, heads, rows, prompts):
        return [ZeroQuery(heads, rows=rows)]

    def replacement(self, layer, current, prompts):
        return torch.zeros_like(current)


class _ZRecorder(AttentionHook):
    """Per-head outputs of chosen layers for real tokens: running sums (mean) or full per-prompt z."""

    def __init__(self, layers, keep_all: bool):
        self.layers = frozenset(layers)
        self.keep_all = keep_all
        self.z: dict[int, list] = {layer: [] for layer in layers}
        self.mask = None

    def on_z(self, call, z):
        z = z.detach().float()
        if self.keep_all:
            self.z[call.layer].append(z.cpu())
        else:
            m = self.mask.to(z.device, z.dtype)[:, :, None, None]
            self.z[call.layer].append(((z * m).sum((0, 1)).cpu(), float(m.sum())))


def _record_z(subject, batch, layers: set[int], chunk: int, keep_all: bool) -> dict:
    rec = _ZRecorder(layers, keep_all)
    with torch.no_grad(), hooks_active(rec):
        for start in progress(range(0, len(batch), chunk), desc="reference run", leave=False):
            part = batch.select(range(start, min(start + chunk, len(batch))), trim=False)
            rec.mask = part.attention_mask
            subject.model(**part.model_inputs(subject.device), use_cache=False, logits_to_keep=1)
    if keep_all:
        width = batch.n_tokens
        return {layer: torch.cat([torch.nn.functional.pad(z, (0, 0, 0, 0, 0, width - z.shape[1])) for z in parts])
                for layer, parts in rec.z.items()}
    return {layer: sum(s for s, _ in parts) / max(1.0, sum(n for _, n in parts)) for layer, parts in rec.z.items()}


class Mean(Ablation):
    """Mean ablation over a reference set (default: the task's own prompts)."""

    name = "mean"
    definition = "head output z replaced by its mean over the reference prompts' real tokens (one vector per head)"

    def __init__(self, reference=None):
        self.reference = reference
        self.means: dict[int, torch.Tensor] = {}

    def prepare(self, subject, batch, layers, chunk):
        self.means = _record_z(subject, self.reference or batch, layers, chunk, keep_all=False)

    def specs(self, heads, rows, prompts):
        return [ReplaceHead(heads, values={(l, h): self.means[l][h] for l, h in heads}, rows=rows)]

    def replacement(self, layer, current, prompts):
        return self.means[layer].to(current.device, current.dtype).expand_as(current)


def derangement(lengths, seed: int) -> torch.Tensor:
    """donor[i] != i with lengths[donor[i]] == lengths[i] (seeded); InputError if some length occurs once."""
    lengths = np.asarray(lengths)
    rng = np.random.default_rng(seed)
    donor = np.empty(len(lengths), dtype=np.int64)
    for value in np.unique(lengths):
        idx = np.flatnonzero(lengths == value)
        if len(idx) < 2:
            raise InputError(f"resample ablation needs another prompt of the same length ({int(value)} tokens) for "
                             "every prompt: use prompts of equal length, or mean ablation")
        shift = rng.permutation(len(idx))
        donor[idx[shift]] = idx[np.roll(shift, 1)]  # a random cycle: nobody is their own donor
    return torch.as_tensor(donor)


class Resample(Ablation):
    """Resample ablation: each prompt's head output comes from another prompt of the same length."""

    name = "resample"
    definition = "head output z replaced by the same head's z on another prompt of equal length (seeded derangement)"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self.z: dict[int, torch.Tensor] = {}
        self.donor = None

    def prepare(self, subject, batch, layers, chunk):
        self.donor = derangement(batch.attention_mask.sum(1).tolist(), self.seed)
        self.z = _record_z(subject, batch, layers, chunk, keep_all=True)

    def specs(self, heads, rows, prompts):
        d = self.donor[prompts]
        return [ReplaceHead(heads, values={(l, h): self.z[l][d, :, h] for l, h in heads}, rows=rows)]

    def replacement(self, layer, current, prompts):
        return self.z[layer][self.donor[prompts], :current.shape[1]].to(current.device, current.dtype)

    def describe(self):
        return {**super().describe(), "seed": self.seed}


class Patch(Ablation):
    """Activation patching: each head's output from the same prompt index of a source batch (e.g. clean -> corrupt)."""

    name = "patch"
    definition = "head output z replaced by its value on the matching source prompt (activation patching)"

    def __init__(self, source):
        self.source = source
        self.z: dict[int, torch.Tensor] = {}

    def prepare(self, subject, batch, layers, chunk):
        if self.source.input_ids.shape != batch.input_ids.shape:
            raise InputError(f"patching needs source and base batches of the same shape, got "
                             f"{tuple(self.source.input_ids.shape)} and {tuple(batch.input_ids.shape)}")
        self.z = _record_z(subject, self.source, layers, chunk, keep_all=True)

    def specs(self, heads, rows, prompts):
        return [ReplaceHead(heads, values={(l, h): self.z[l][prompts, :, h] for l, h in heads}, rows=rows)]

    def replacement(self, layer, current, prompts):
        return self.z[layer][prompts, :current.shape[1]].to(current.device, current.dtype)


ABLATIONS = {"zero": Zero, "mean": Mean, "resample": Resample, "query": ZeroQueries}


def get_ablation(ablation, seed: int = 0) -> Ablation:
    """An Ablation from a name (zero, mean, resample, query) or an Ablation instance."""
    if isinstance(ablation, Ablation):
        return ablation
    if ablation not in ABLATIONS:
        raise InputError(f"unknown intervention {ablation!r}: use one of {', '.join(ABLATIONS)}")
    return Resample(seed) if ablation == "resample" else ABLATIONS[ablation]()
