"""Detectors: named recipes that build a stimulus, capture once, and turn captures into Atlas columns.

A detector's ``compute(subject, ctx)`` returns {column: (n_layers, n_heads) array}. ``ctx`` caches
captures by stimulus, so detectors that share a stimulus share one forward pass. Analyses in other
modules add detectors with :func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .errors import InputError
from .patterns import capture
from .scores import copying_score, duplicate_token_score, induction_score, previous_token_score, sink_rate
from .scores.sinks import key_importance
from .stimuli import random_token_ids, repeated_random_tokens


@dataclass(frozen=True)
class Column:
    """What an Atlas column means: one-line definition, source, range."""

    definition: str
    source: str
    range: str


@dataclass
class Detector:
    name: str
    columns: dict[str, Column]
    compute: Callable[["Subject", "ScanContext"], dict[str, np.ndarray]]
    description: str = ""


@dataclass
class ScanContext:
    """Settings and the per-stimulus capture cache shared by the detectors of one scan."""

    seed: int = 0
    settings: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    stimuli: dict = field(default_factory=dict)  # what each stimulus was, for the Atlas metadata

    def get(self, key, build):
        """Return the cached value for ``key``, building it once with ``build()``."""
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]


REGISTRY: dict[str, Detector] = {}

# modules that register more detectors when imported (analyses outside this file add themselves here)
DETECTOR_MODULES: tuple[str, ...] = ()


def register(detector: Detector) -> Detector:
    """Add a detector to the registry (name must be new)."""
    if detector.name in REGISTRY:
        raise ValueError(f"detector {detector.name!r} is registered twice")
    REGISTRY[detector.name] = detector
    return detector


def available() -> list[str]:
    """Names of every registered detector, the plugin modules' included."""
    import importlib

    for module in DETECTOR_MODULES:
        importlib.import_module(module)
    return list(REGISTRY)


def resolve(names) -> list[Detector]:
    """Detectors by name (a comma-separated string or a list); clear error for unknown names."""
    available()
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise InputError(f"unknown detector(s) {', '.join(unknown)}: choose from {', '.join(REGISTRY)}")
    if not names:
        raise InputError(f"no detectors given: choose from {', '.join(REGISTRY)}")
    return [REGISTRY[n] for n in names]


def _by_layer(cap, subject) -> torch.Tensor:
    """Captured patterns of all heads as (L, H, B, N, N)."""
    return torch.stack([cap.patterns[layer].transpose(0, 1) for layer in range(subject.n_layers)])


def _repeat_capture(subject, ctx: ScanContext):
    """The repeated-random-token stimulus, with patterns (L, H, B, N, N) and head outputs z, captured once."""
    def build():
        s = ctx.settings
        stim = repeated_random_tokens(subject, s.get("seq_len", 50), s.get("n_repeats", 2), s.get("batch", 10), ctx.seed)
        ctx.stimuli["repeated_random_tokens"] = stim.settings()
        cap = capture(subject, stim.input_ids, z=True, batch_size=s.get("batch_size"))
        return stim, _by_layer(cap, subject), cap.z

    return ctx.get("repeat", build)


def _previous_token(subject, ctx):
    _, pats, _ = _repeat_capture(subject, ctx)
    return {"previous_token": previous_token_score(pats).numpy()}


def _duplicate_token(subject, ctx):
    stim, pats, _ = _repeat_capture(subject, ctx)
    return {"duplicate_token": duplicate_token_score(pats, stim.input_ids).numpy()}


def _induction(subject, ctx):
    stim, pats, _ = _repeat_capture(subject, ctx)
    return {"induction": induction_score(pats, stim.induction_target).numpy()}


def _copying(subject, ctx):
    stim, pats, z = _repeat_capture(subject, ctx)
    batch, n_queries = ctx.settings.get("copy_batch", 4), ctx.settings.get("copy_queries", 12)
    ids = stim.input_ids[:batch]
    queries = torch.arange(ids.shape[1] - n_queries, ids.shape[1])
    ctx.stimuli["copying"] = {"kind": "repeated_random_tokens (first sequences)", "batch": int(ids.shape[0]),
                              "queries": f"last {n_queries} positions"}
    out = np.zeros((subject.n_layers, subject.n_heads))
    for layer in range(subject.n_layers):
        logits = subject.direct_logits(layer, z[layer][:batch, queries]).cpu()  # (H, B, Q, V)
        out[layer] = copying_score(logits, pats[layer][:, :batch][:, :, queries], ids, first_key=stim.offset).numpy()
    return {"copying": out}


def _sink(subject, ctx):
    s = ctx.settings
    n_tokens, batch = s.get("sink_tokens", 64), s.get("sink_batch", 20)

    def build():
        texts = s.get("sink_texts")
        if texts:
            ids = [subject.encode(t, prepend_bos=True)[:n_tokens] for t in texts[:batch]]
            width = min(len(i) for i in ids)
            ids = torch.stack([i[:width] for i in ids])
            ctx.stimuli["sink"] = {"kind": "text", "tokens": width, "batch": len(ids), "bos": True}
        else:
            ids = random_token_ids(subject, batch, n_tokens - 1, ctx.seed + 2, distinct=False)
            ids = torch.cat([torch.full((batch, 1), subject.bos_token_id or ids[0, 0].item()), ids], dim=1)
            ctx.stimuli["sink"] = {"kind": "random_tokens", "tokens": n_tokens, "batch": batch, "bos": True,
                                   "seed": ctx.seed + 2}
        return _by_layer(capture(subject, ids), subject)

    pats = ctx.get("sink", build)
    return {"sink_rate": sink_rate(pats, key=0, epsilon=0.3).numpy(),
            "sink_mass": key_importance(pats)[..., 0].mean(-1).numpy()}


for _det in (
    Detector("previous_token", {"previous_token": Column(
        "mean attention A[i, i-1] over queries i >= 1 on repeated random tokens",
        "Olsson et al. 2022; TransformerLens head_detector 'previous_token_head'", "[0, 1]")}, _previous_token),
    Detector("duplicate_token", {"duplicate_token": Column(
        "mean attention mass on earlier copies of the query's token, over queries that have one",
        "Wang et al. 2022 (IOI); METHODS.md s1", "[0, 1]")}, _duplicate_token),
    Detector("induction", {"induction": Column(
        "prefix matching: mean attention from later-repeat tokens to the key after their previous occurrence "
        "(BOS + 50 random tokens x 2, batch 10)", "Olsson et al. 2022; ARENA (heads > 0.3 called induction heads)",
        "[0, 1]")}, _induction),
    Detector("copying", {"copying": Column(
        "2*share-1, share = attention-weighted share of the head's ReLU'd, vocab-centred direct logit raise on the "
        "context's tokens that goes to the attended ones (last 12 queries of 4 repeated-token sequences, BOS excluded)",
        "Olsson et al. 2022 (copying); affine map ours, see scores/copying.py", "[-1, 1]")}, _copying),
    Detector("sink", {
        "sink_rate": Column("share of samples with alpha_0 > 0.3, alpha_k = sum_{i>=k} A[i,k] / (T-k) "
                            "(64-token prompts starting with BOS)", "Gu et al. 2024, Sink_1^eps, eps = 0.3", "[0, 1]"),
        "sink_mass": Column("mean over samples of alpha_0, the first token's importance", "Gu et al. 2024", "[0, 1]"),
    }, _sink),
):
    register(_det)

DEFAULT_DETECTORS = ("previous_token", "duplicate_token", "induction", "copying", "sink")
