"""Opt-in Atlas detectors: ``retrieval`` (Wu et al. 2024), ``long_range`` (METHODS s8), ``sink_hidden`` (ACT).

Run with ``workbench scan --detectors retrieval,long_range,sink_hidden`` (not in the default scan).
Settings (``scan(settings=...)``): ``niah_lengths`` (256, 512), ``niah_depths`` (0, 50, 100), ``niah_needles``
(8: two per family), ``niah_kinds`` (needle families, ``stimuli.niah.FAMILIES``), ``niah_haystack``
('noise', 'random' or a file), ``niah_max_new_tokens``, ``niah_batch``; ``long_range_window``, ``long_range_tokens``,
``long_range_batch``; ``hidden_sink_tokens``, ``hidden_sink_batch``. Natural text comes from
``sink_texts`` (``scan --text FILE``) when given, else from the seeded random-word haystack.
"""

from __future__ import annotations

import torch

from ..detectors import Column, Detector, register
from ..errors import InputError
from ..stimuli.niah import FAMILIES, KINDS, haystack_ids, niah_grid
from .long_range import N_SINK, long_range_mass, uniform_long_range
from .niah import run_niah
from .scoring import RETRIEVAL_THRESHOLD
from .sinks import HIDDEN_SINK_THRESHOLD, hidden_sink_report


def natural_text(subject, ctx, n_tokens: int, batch: int, key: str) -> torch.Tensor:
    """(batch, n_tokens) ids of natural text: BOS + the scan's text paragraphs joined, else the seeded random-word haystack."""
    bos = [subject.bos_token_id] if subject.bos_token_id is not None else []
    body = n_tokens - len(bos)
    texts = ctx.settings.get("sink_texts")
    if texts:
        stream = subject.tokenizer(" ".join(texts), add_special_tokens=False)["input_ids"]
        if len(stream) < body * batch:
            raise InputError(f"the text has {len(stream)} tokens; {key} needs {batch} x {body}: pass a longer file")
        rows = [bos + stream[i * body:(i + 1) * body] for i in range(batch)]
        ctx.stimuli[key] = {"kind": "text", "tokens": n_tokens, "batch": batch, "bos": bool(bos)}
    else:
        rows = [bos + haystack_ids(subject, "random", body, seed=ctx.seed + 31 * i) for i in range(batch)]
        ctx.stimuli[key] = {"kind": "random-word text", "tokens": n_tokens, "batch": batch, "bos": bool(bos),
                            "seed": ctx.seed}
    return torch.tensor(rows, dtype=torch.long)


def _retrieval(subject, ctx):
    s = ctx.settings
    grid = niah_grid(subject, s.get("niah_lengths", (256, 512)), s.get("niah_depths", (0, 50, 100)),
                     n_needles=s.get("niah_needles", 2 * len(FAMILIES)), haystack=s.get("niah_haystack", "noise"),
                     seed=ctx.seed, kinds=s.get("niah_kinds", FAMILIES))
    run = run_niah(subject, grid.tests, max_new_tokens=s.get("niah_max_new_tokens", 32),
                   batch_size=s.get("niah_batch", 8))
    scores = run.retrieval_scores()  # InputError if no test was answered correctly
    correct = run.table.groupby("kind", sort=False)["correct"]
    ctx.stimuli["niah"] = {**grid.settings, "accuracy": run.accuracy, "n_tests": len(run.table),
                           "n_correct": int(run.table["correct"].sum()),
                           "accuracy_by_family": correct.mean().round(4).to_dict(),
                           "retrieval_heads": int((scores > RETRIEVAL_THRESHOLD).sum())}
    families = list(dict.fromkeys(run.table["kind"]))
    return {"retrieval": run.retrieval_items(), **{f"retrieval_{k}": run.retrieval_items(k) for k in families}}


def _long_range(subject, ctx):
    s = ctx.settings
    window, n_tokens = s.get("long_range_window", 128), s.get("long_range_tokens", 1024)
    ids = natural_text(subject, ctx, n_tokens, s.get("long_range_batch", 2), "long_range")
    ctx.stimuli["long_range"].update({"window": window, "n_sink": N_SINK,
                                      "uniform_reference": round(uniform_long_range(n_tokens, window), 4)})
    return {"long_range": long_range_mass(subject, ids, window=window)}


def _sink_hidden(subject, ctx):
    s = ctx.settings
    ids = natural_text(subject, ctx, s.get("hidden_sink_tokens", 256), s.get("hidden_sink_batch", 8), "sink_hidden")
    report = hidden_sink_report(subject, ids)
    ctx.stimuli["sink_hidden"]["top_tokens"] = report.tokens(5).to_dict("records")
    ctx.stimuli["sink_hidden"]["memory"] = report.memory
    return {"sink_hidden": report.rate, "sink_hidden_mass": report.mass}


_RETRIEVAL = ("retrieval score: per correctly answered NIAH test, the share of answer tokens the head copy-pastes "
              "(its top-1 key lies in the needle's answer and holds the generated token), averaged over those tests")
register(Detector("retrieval", {
    "retrieval": Column(f"{_RETRIEVAL}, needle families mixed; retrieval heads > {RETRIEVAL_THRESHOLD}",
                        "Wu et al. 2024 (Retrieval Head); METHODS.md s2", "[0, 1]"),
    **{f"retrieval_{kind}": Column(f"{_RETRIEVAL}, '{kind}' needles only", "Wu et al. 2024 (Retrieval Head); "
                                   "per needle family: docs/error-bars.md", "[0, 1]") for kind in KINDS},
}, _retrieval, "retrieval heads from greedy NIAH answers, overall and per needle family"))
register(Detector("long_range", {"long_range": Column(
    f"share of non-sink attention (first {N_SINK} keys excluded) on keys beyond the local window "
    "(default 128 tokens), mean over queries past window + sinks, on natural text",
    "METHODS.md s8 (cf. RazorAttention, DuoAttention)", "[0, 1]")},
    _long_range, "long-context vs local heads"))
register(Detector("sink_hidden", {
    "sink_hidden": Column(f"share of texts in which the head has a hidden sink: a key other than the first sink "
                          f"with alpha_k > {HIDDEN_SINK_THRESHOLD}, alpha_k = sum_(i>=k) A[i,k]/(T-k)",
                          "Yu et al. 2024 (ACT); Gu et al. 2024 for alpha", "[0, 1]"),
    "sink_hidden_mass": Column("mean over texts of the summed alpha_k of the head's hidden sinks",
                               "Yu et al. 2024 (ACT)", "[0, number of hidden sinks]"),
}, _sink_hidden, "hidden attention sinks"))
