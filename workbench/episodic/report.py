"""The HTML report of an episodic run: figures and the notes a reader needs, in one self-contained file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..viz import head_heatmap, top_table, write_report
from ..viz.episodic import (ablation_figure, beta_figure, crp_figure, lag_crp_figure, layer_profile_figure,
                            recall_figure, repeat_surprisal_figure, serial_position_figure,
                            surprisal_timecourse_figure)
from .ablation import top_heads
from .cmr_fit import CMR_LIKE, CMR_LIKE_STRICT

N_SHOWN = 4


def _best(matrix, k: int, largest: bool = True) -> list:
    """Up to k heads with the largest (smallest) finite values; none when no head has one."""
    n = int(np.isfinite(np.asarray(matrix, dtype=np.float64)).sum())
    return top_heads(matrix, min(k, n), largest) if n else []


def _heads_section(run) -> list:
    e = run.effects
    d = np.asarray(e.columns["cmr_distance"], dtype=np.float64)
    best, worst = _best(d, N_SHOWN, largest=False), _best(d, 1)
    contig = _best(e.columns["contiguity"], N_SHOWN)
    edges = _best(e.columns["primacy"], 2) + _best(e.columns["recency"], 2)
    s = e.stimuli
    items = [
        f"CMR fits (Ji-An et al. 2024): each head's mean scaled pre-softmax score from second-presentation tokens to "
        f"the study item at each lag from the token's first occurrence, on {s['cmr']['batch']} sequences of BOS + "
        f"{s['cmr']['n_items']} random tokens x 2 (seed {s['cmr']['seed']}); bands are 95% bootstrap intervals over "
        f"sequences. The CMR grid is fitted on lags -5..5; CMR-like: distance < {CMR_LIKE} (strict < {CMR_LIKE_STRICT}).",
        best and lag_crp_figure(e.score_curve, best, fit=e.fit, title="The most CMR-like heads: lag curves and CMR fits"),
        worst and lag_crp_figure(e.score_curve, worst, fit=e.fit, title="The least CMR-like head, for contrast"),
        layer_profile_figure(d),
        head_heatmap(np.log10(np.clip(d, 1e-4, None)), "log10 CMR distance (low = CMR-like)", colorscale="Viridis_r"),
        beta_figure(e.fit, d < CMR_LIKE_STRICT),
        f"Temporal effects (Mistry et al. 2025): {s['temporal']['batch']} sequences of BOS + the "
        f"{s['temporal']['n_items']} most frequent single-token words once, then in a random order. Contiguity and "
        "asymmetry come from each head's Kahana lag-CRP of attention (attention to the study item at each lag, per "
        "opportunity), primacy and recency from its serial-position curve of attention.",
        contig and crp_figure(e.crp_lags, {f"L{l}H{h}": e.crp[l, h] for l, h in contig},
                              title="Lag-CRP of attention of the most contiguous heads"),
        head_heatmap(e.columns["contiguity"], "contiguity of attention", colorscale="RdBu", zmid=0.0),
        head_heatmap(e.columns["asymmetry"], "forward asymmetry CRP(+1) - CRP(-1)", colorscale="RdBu", zmid=0.0),
        edges and serial_position_figure(e.position_mean, e.position_sem, edges,
                                         title="Serial-position curves: the two strongest primacy and recency heads"),
        recall_figure(e.recall_curve.lags, {"temporal lists": e.recall_curve.mean,
                                            "random tokens x 2": e.repeat_recall_curve.mean},
                      {"temporal lists": (e.recall_curve.ci_low, e.recall_curve.ci_high),
                       "random tokens x 2": (e.repeat_recall_curve.ci_low, e.repeat_recall_curve.ci_high)}),
    ]
    return [item for item in items if item is not None and (not isinstance(item, list) or item)]


def _ablation_section(run) -> list:
    items = []
    for by, result in run.ablations.items():
        table = result.table
        items += [
            f"Ablation of the top {int(table['n_ablated'].max())} heads by {by} (output z zeroed) against "
            f"{len(table) - 2} random sets of as many heads (seeded, outside the top set). Attention contiguity is the "
            f"mean over the {len(result.measured)} heads ablated in no condition (attn_contiguity) and over the "
            f"{len(result.contiguous)} of them in the top decile of intact contiguity (attn_contiguity_top): an "
            "ablated head's own pattern does not change when its output is zeroed.",
            ablation_figure(table, title=f"Ablation by {by}"),
            recall_figure(result.lags, result.recall, result.recall_ci, title=f"Serial recall in outputs, ablation by {by}"),
            crp_figure(result.crp_lags, result.crp, title=f"Lag-CRP of attention (measured heads), ablation by {by}"),
            top_table(table.drop(columns=["heads"]), title=f"Ablation by {by}"),
        ]
    for by, table in run.icl.items():
        items += [f"In-context-learning score (Olsson et al. 2022; Ji-An et al. 2024's ablation): loss at token 500 "
                  f"minus loss at token 50 of natural text, top heads by {by} vs random sets (more negative = more "
                  "in-context learning).", top_table(table, title=f"ICL score, ablation by {by}")]
    return items


def _surprisal_section(run) -> list:
    res = run.surprisal
    summary = res.summary
    items = ["Repeat surprisal (Armeni et al. 2022): 100 x mean surprisal of list 2 / list 1 per prompt, median over "
             "prompts with 95% bootstrap intervals. Expected: repeated << permuted < novel."]
    plain = summary[~summary["scramble"].astype(bool)]
    for text, group in plain.groupby("intervening", sort=False):
        items.append(repeat_surprisal_figure(group, title=f"Repeat surprisal by list length, intervening text '{text}'"))
    longest = plain["list_len"].max()
    by_len = plain[plain["list_len"] == longest]
    if by_len["intervening_tokens"].nunique() > 1:
        items.append(repeat_surprisal_figure(by_len, by="intervening_tokens",
                                             title=f"Repeat surprisal by intervening-text length ({longest} nouns)"))
    course = res.timecourse
    first = course[(course["list_len"] == longest) & ~course["scramble"].astype(bool)]
    first = first[first["intervening"] == first["intervening"].iloc[0]]
    items.append(surprisal_timecourse_figure(first, title=f"Surprisal per noun ({longest} nouns, "
                                                          f"'{first['intervening'].iloc[0]}' intervening text)"))
    items.append(top_table(summary, title="Repeat surprisal per cell"))
    return items


def write_episodic_report(run, subject, path) -> Path:
    """Write the run's HTML report (only the sections of the steps that ran) and return its path."""
    sections = []
    if run.summary is not None:
        sections.append(("Summary", [top_table(run.summary, title="Headline numbers")]))
    if run.effects is not None:
        sections.append(("Heads as memory search: CMR fits and temporal effects", _heads_section(run)))
    if run.ablations or run.icl:
        sections.append(("Causal link: ablation", _ablation_section(run)))
    if run.surprisal is not None:
        sections.append(("Verbatim memory: repeat surprisal", _surprisal_section(run)))
    meta = dict(run.atlas.meta) if run.atlas is not None else {**subject.facts()}
    meta["step_seconds"] = run.seconds
    return write_report(path, f"Episodic memory in attention: {subject.name}", sections, meta)
