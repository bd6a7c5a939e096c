"""Detectors: named recipes that build a stimulus, capture once, and turn captures into Atlas columns.

A detector's ``compute(subject, ctx)`` returns {column: (n_layers, n_heads) array, or ``ItemScores``: the
per-item values (sequences, prompts, NIAH tests) whose mean is the score and whose bootstrap gives its
interval (``workbench.scores.intervals``)}. A plain array gets no interval. ``ctx`` caches
captures by stimulus, so detectors that share a stimulus share one forward pass. Analyses in other
modules add detectors with :func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .errors import InputError
from .patterns import capture, capture_stats, predict_capture, predict_stats, select_heads
from .patterns.capture import memory_plan, too_big
from .patterns.memory import Budget, ModelDims, Prediction, largest_step
from .scores.copying import copying_items
from .scores.induction import duplicate_token_items, induction_items, previous_token_items
from .scores.intervals import ItemScores
from .scores.sinks import sink_items
from .scores.streamed import (duplicate_token_from_lags, previous_token_from_lags,
                              target_mass_from_stats)
from .stimuli import random_token_ids, repeated_random_tokens


@dataclass(frozen=True)
class Column:
    """What an Atlas column means: one-line definition, source, range; ``detail`` writes the settings a scan
    actually used (from ``ScanContext.stimuli[stimulus]``) into the definition."""

    definition: str
    source: str
    range: str
    stimulus: str = ""
    detail: Callable[[dict], str] | None = None

    def describe(self, stimuli: dict) -> str:
        """The definition, with the stimulus settings actually used in brackets when known."""
        used = stimuli.get(self.stimulus)
        return self.definition if self.detail is None or not used else f"{self.definition} ({self.detail(used)})"


def _repeat_detail(s: dict) -> str:
    return (f"{'BOS + ' if s.get('bos') else ''}{s['seq_len']} random tokens x {s['n_repeats']}, batch {s['batch']}, "
            f"seed {s['seed']}")


def _copying_detail(s: dict) -> str:
    return f"last {s['n_queries']} queries of {s['batch']} repeated-token sequences, BOS excluded"


def _sink_detail(s: dict) -> str:
    what = "paragraphs of a text file" if s["kind"] == "text" else "random tokens"
    return f"{s['batch']} prompts of {s['tokens']} tokens starting with BOS: {what}"


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
DETECTOR_MODULES: tuple[str, ...] = ("workbench.episodic.detector", "workbench.retrieval.detectors",
                                     "workbench.toy.planted.scan")


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
    """Captured patterns of all heads as (L, H, B, N, N), moved layer by layer (never two copies of all of them)."""
    first = cap.patterns[0]
    out = first.new_empty((subject.n_layers, first.shape[1], first.shape[0], *first.shape[2:]))
    for layer in range(subject.n_layers):
        out[layer] = cap.patterns.pop(layer).transpose(0, 1)
    return out


def _stats_by_layer(stats, subject, name) -> torch.Tensor:
    """One streamed statistic of all heads as (L, H, B, Nq, ...)."""
    return torch.stack([stats.stats[layer][name].transpose(0, 1) for layer in range(subject.n_layers)])


def _requested_mode(ctx) -> str:
    mode = ctx.settings.get("capture", "auto")
    if mode not in ("auto", "exact", "streamed"):
        raise InputError(f"capture must be auto, exact or streamed, got {mode!r}")
    return mode


def choose_capture(subject, ctx, what: str, exact: Prediction | None, streamed, batch: int) -> dict:
    """Exact when asked for or when its predicted peak fits the budget, else streamed in the largest batch steps that
    fit (``streamed(step)`` predicts one); the plan says which and why (it goes into the Atlas metadata)."""
    mode, budget = _requested_mode(ctx), Budget.now(subject.device)
    if exact is not None and (mode == "exact" or (mode == "auto" and budget.allows(exact))):
        if not budget.allows(exact):
            raise too_big(f"exact capture of {what}", exact, budget, "Use --capture streamed (same scores, O(N) memory).")
        return memory_plan("exact", batch, batch, exact, budget, "asked for" if mode == "exact" else "fits")
    step = ctx.settings.get("batch_size") or largest_step(streamed, batch, budget)
    if step == 0 or not budget.allows(streamed(step)):
        raise too_big(f"streamed statistics of {what}", streamed(max(step, 1)), budget,
                      "Use a smaller batch or shorter sequences.")
    why = ("asked for" if mode == "streamed" else
           f"exact would need {exact.describe()}" if exact is not None else "no exact path")
    return memory_plan("streamed", step, batch, streamed(step), budget, why)


@dataclass
class RepeatAttention:
    """Attention on the repeated-random-token stimulus: exact per-sequence scores or streamed statistics."""

    stim: object
    mode: str
    exact: torch.Tensor | None = None  # (L, B, 3, H) per sequence: previous-token, duplicate-token, induction
    counts: torch.Tensor | None = None  # (3, B): the queries each sequence contributes to each exact score
    lag_mass: torch.Tensor | None = None  # (L, H, B, N, bins)
    edges: torch.Tensor | None = None
    target_prob: torch.Tensor | None = None  # (L, H, B, N, 1)

    def _exact_items(self, score: int) -> ItemScores:
        return ItemScores.from_tensor(self.exact[:, :, score].permute(0, 2, 1), self.counts[score], unit="sequences")

    def previous_token(self) -> ItemScores:
        if self.mode == "exact":
            return self._exact_items(0)
        return ItemScores.from_tensor(*previous_token_from_lags(self.lag_mass, self.edges), unit="sequences")

    def duplicate_token(self) -> ItemScores:
        if self.mode == "exact":
            return self._exact_items(1)
        s = self.stim
        items = duplicate_token_from_lags(self.lag_mass, self.edges, s.seq_len, s.n_repeats, s.offset)
        return ItemScores.from_tensor(*items, unit="sequences")

    def induction(self) -> ItemScores:
        if self.mode == "exact":
            return self._exact_items(2)
        items = target_mass_from_stats(self.target_prob, self.stim.induction_target)
        return ItemScores.from_tensor(*items, unit="sequences")


def _repeat_scores(stim, counts: dict):
    """reduce(layer, pattern) for capture: the three repeat scores of every head of one layer per sequence,
    (B, 3, H) on the CPU; each score's query count per sequence (B,) goes into ``counts`` (the same every layer)."""
    def reduce(layer, pattern):
        p = pattern.transpose(0, 1)  # (H, B, N, N): the score functions take the batch third-last
        items = [previous_token_items(p), duplicate_token_items(p, stim.input_ids),
                 induction_items(p, stim.induction_target)]
        counts.update({i: c.cpu() for i, (_, c) in enumerate(items)})
        return torch.stack([v for v, _ in items]).permute(2, 0, 1).cpu()
    return reduce


def _repeat_attention(subject, ctx: ScanContext) -> RepeatAttention:
    """The repeated-random-token stimulus and its attention, captured once per scan.

    Exact: one forward pass whose patterns are reduced to the scores layer by layer (never kept); streamed: the
    statistics kernels, in batch steps when the whole batch would not fit. ``choose_capture`` decides.
    """
    def build():
        s = ctx.settings
        stim = repeated_random_tokens(subject, s.get("seq_len", 50), s.get("n_repeats", 2), s.get("batch", 10), ctx.seed)
        b, n = stim.input_ids.shape
        dims, device = ModelDims.of(subject), subject.device.type
        from .kernels import AttentionStatsRequest

        lags = {0, 1, 2} | {k * stim.seq_len + d for k in range(1, stim.n_repeats) for d in (0, 1)}
        edges = torch.tensor(sorted(lags))
        request = AttentionStatsRequest(lag_bins=edges, targets=stim.induction_target, target_lags=(0,))
        exact = predict_capture(dims, select_heads(subject), b, n, device_type=device, reduce_copies=1.0,
                                reduce_bytes=3 * dims.n_layers * dims.n_heads * b * 4)
        plan = choose_capture(subject, ctx, f"{b} x {n} repeated tokens", exact,
                              lambda step: predict_stats(dims, request, b, n, step=step, device_type=device), b)
        ctx.stimuli["repeated_random_tokens"] = {**stim.settings(), "capture": plan["mode"], "memory": plan}
        if plan["mode"] == "exact":
            counts = {}
            cap = capture(subject, stim.input_ids, reduce=_repeat_scores(stim, counts), reduce_copies=1.0, batch_size=b)
            return RepeatAttention(stim, "exact", exact=torch.stack([cap.reduced[l] for l in range(subject.n_layers)]),
                                   counts=torch.stack([counts[i] for i in range(3)]))
        stats = capture_stats(subject, stim.input_ids, request, batch_size=plan["batch_size"])
        return RepeatAttention(stim, "streamed", lag_mass=_stats_by_layer(stats, subject, "lag_mass"), edges=edges,
                               target_prob=_stats_by_layer(stats, subject, "target_prob"))

    return ctx.get("repeat", build)


def _previous_token(subject, ctx):
    return {"previous_token": _repeat_attention(subject, ctx).previous_token()}


def _duplicate_token(subject, ctx):
    return {"duplicate_token": _repeat_attention(subject, ctx).duplicate_token()}


def _induction(subject, ctx):
    return {"induction": _repeat_attention(subject, ctx).induction()}


def _copying(subject, ctx):
    """Copying on the last queries of the first repeated sequences: exact rows of attention plus head outputs z."""
    stim = _repeat_attention(subject, ctx).stim
    batch, n_queries = ctx.settings.get("copy_batch", 4), ctx.settings.get("copy_queries", 12)
    ids = stim.input_ids[:batch]
    b, n = ids.shape
    queries = torch.arange(n - n_queries, n)
    dims, device = ModelDims.of(subject), subject.device.type
    from .kernels import AttentionStatsRequest

    request = AttentionStatsRequest(rows=queries)
    z_bytes = dims.n_layers * b * n * dims.q_width * 4
    exact = predict_capture(dims, select_heads(subject), b, n, device_type=device, n_rows=n_queries, z=True)
    plan = choose_capture(subject, ctx, f"{b} x {n} tokens (copying)", exact,
                          lambda step: predict_stats(dims, request, b, n, step=step, device_type=device,
                                                     extra_kept=z_bytes), b)
    ctx.stimuli["copying"] = {"kind": "repeated_random_tokens (first sequences)", "batch": b,
                              "queries": f"last {n_queries} positions", "n_queries": n_queries,
                              "capture": plan["mode"], "memory": plan}
    if plan["mode"] == "exact":
        cap = capture(subject, ids, z=True, rows=queries)
        rows, z = {layer: p.transpose(0, 1) for layer, p in cap.patterns.items()}, cap.z
    else:
        stats = capture_stats(subject, ids, request, z=True, batch_size=plan["batch_size"])
        rows = {layer: stats.stats[layer]["rows"].transpose(0, 1) for layer in stats.stats}
        z = stats.z
    out = np.zeros((subject.n_layers, subject.n_heads, ids.shape[0]))
    for layer in range(subject.n_layers):
        logits = subject.direct_logits(layer, z[layer][:, queries]).cpu()  # (H, B, Q, V)
        out[layer] = copying_items(logits, rows[layer], ids, first_key=stim.offset).numpy()
    return {"copying": ItemScores.from_tensor(out, unit="sequences")}


def _sink(subject, ctx):
    s = ctx.settings
    n_tokens, batch = s.get("sink_tokens", 64), s.get("sink_batch", 20)

    def build():
        texts = s.get("sink_texts")
        if texts:
            ids = [subject.encode(t, prepend_bos=True, max_tokens=n_tokens) for t in texts[:batch]]  # long ones cut
            width = min(len(i) for i in ids)
            ids = torch.stack([i[:width] for i in ids])
            ctx.stimuli["sink"] = {"kind": "text", "tokens": width, "batch": len(ids), "bos": True}
        else:
            ids = random_token_ids(subject, batch, n_tokens - 1, ctx.seed + 2, distinct=False)
            ids = torch.cat([torch.full((batch, 1), subject.bos_token_id or ids[0, 0].item()), ids], dim=1)
            ctx.stimuli["sink"] = {"kind": "random_tokens", "tokens": n_tokens, "batch": batch, "bos": True,
                                   "seed": ctx.seed + 2}
        cap = capture(subject, ids)
        ctx.stimuli["sink"]["memory"] = cap.memory
        return _by_layer(cap, subject)

    has_sink, alpha = sink_items(ctx.get("sink", build), key=0, epsilon=0.3)
    return {"sink_rate": ItemScores.from_tensor(has_sink, unit="prompts"),
            "sink_mass": ItemScores.from_tensor(alpha, unit="prompts")}


for _det in (
    Detector("previous_token", {"previous_token": Column(
        "mean attention A[i, i-1] over queries i >= 1 on repeated random tokens",
        "Olsson et al. 2022; TransformerLens head_detector 'previous_token_head'", "[0, 1]",
        "repeated_random_tokens", _repeat_detail)}, _previous_token),
    Detector("duplicate_token", {"duplicate_token": Column(
        "mean attention mass on earlier copies of the query's token, over queries that have one",
        "Wang et al. 2022 (IOI); METHODS.md s1", "[0, 1]", "repeated_random_tokens", _repeat_detail)}, _duplicate_token),
    Detector("induction", {"induction": Column(
        "prefix matching: mean attention from later-repeat tokens to the key after their previous occurrence",
        "Olsson et al. 2022; ARENA (heads > 0.3 called induction heads)", "[0, 1]",
        "repeated_random_tokens", _repeat_detail)}, _induction),
    Detector("copying", {"copying": Column(
        "percentile score 2*p-1: attention-weighted percentile p, within the vocabulary, of the attended tokens' "
        "direct logits (top 8 attended keys per query)",
        "after Olsson et al. 2022 (copying); deviation in scores/copying.py", "[-1, 1]", "copying", _copying_detail)},
        _copying),
    Detector("sink", {
        "sink_rate": Column("share of samples with alpha_0 > 0.3, alpha_k = sum_{i>=k} A[i,k] / (T-k)",
                            "Gu et al. 2024, Sink_1^eps, eps = 0.3", "[0, 1]", "sink", _sink_detail),
        "sink_mass": Column("mean over samples of alpha_0, the first token's importance", "Gu et al. 2024", "[0, 1]",
                            "sink", _sink_detail),
    }, _sink),
):
    register(_det)

DEFAULT_DETECTORS = ("previous_token", "duplicate_token", "induction", "copying", "sink")
