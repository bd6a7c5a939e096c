"""The whole episodic-memory analysis of one model into a folder, each result written (atomically) as it finishes.

Files: ``atlas.parquet`` + ``atlas.json`` (induction + episodic columns), ``curves.npz`` (lag curves, fits, CRPs,
serial-position and recall curves), ``ablation_<by>_<lists>.csv`` (one row per finished condition),
``icl_<by>.csv`` (ICL-score ablation, when a text is given), ``surprisal_prompts.csv`` / ``surprisal_summary.csv`` / ``surprisal_timecourse.csv``, ``summary.csv`` +
``summary.md`` (headline numbers, rewritten after every step) and ``episodic.html`` (figures and notes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import atomic_write, atomic_write_text
from ..stimuli.lists import CONDITIONS, frequent_token_lists, random_token_lists
from .ablation import AblationResult, contiguity_ablation, icl_score_ablation, text_windows, top_heads
from .detector import COLUMNS
from .heads import HeadEffects, head_effects
from .summary import summary_table
from .surprisal import LIST_LENGTHS, VerbatimResult, verbatim_experiment

STEPS = ("heads", "ablation", "surprisal")
ABLATE_BY = ("induction", "cmr")
ABLATION_LISTS = ("temporal", "random")  # Mistry et al.'s frequent words then permuted; Ji-An et al.'s random tokens x 2


@dataclass
class EpisodicRun:
    """What a run produced so far (the steps it skipped stay None)."""

    out: Path
    effects: HeadEffects | None = None
    atlas: object = None
    ablations: dict[str, AblationResult] = field(default_factory=dict)
    icl: dict[str, pd.DataFrame] = field(default_factory=dict)  # ranked by -> ICL score per condition
    surprisal: VerbatimResult | None = None
    summary: pd.DataFrame | None = None
    seconds: dict = field(default_factory=dict)


def _csv(df: pd.DataFrame, path: Path) -> Path:
    return atomic_write_text(path, df.to_csv(index=False))


def _save_curves(effects: HeadEffects, path: Path) -> Path:
    c, f, r = effects.score_curve, effects.fit, effects.recall_curve
    arrays = {"score_lags": c.lags, "score_mean": c.mean, "score_sem": c.sem, "score_ci_low": c.ci_low,
              "score_ci_high": c.ci_high, "fit_lags": f.lags, "fit_curve": f.curve, "crp_lags": effects.crp_lags,
              "crp": effects.crp, "attn_mean": effects.attn_curve.mean, "position_mean": effects.position_mean,
              "position_sem": effects.position_sem, "recall_lags": r.lags, "recall_mean": r.mean,
              "recall_ci_low": r.ci_low, "recall_ci_high": r.ci_high,
              "repeat_recall_mean": effects.repeat_recall_curve.mean}

    def write(tmp: Path):
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **{k: np.asarray(v) for k, v in arrays.items() if v is not None})

    return atomic_write(path, write)


def _markdown(df: pd.DataFrame) -> str:
    """A pipe table of ``df`` (GitHub markdown)."""
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _write_summary(run: EpisodicRun, induction) -> None:
    effects = run.effects
    recall = None if effects is None else {"temporal lists (test order permuted)": effects.recall_curve,
                                           "random tokens x 2 (same order)": effects.repeat_recall_curve}
    run.summary = summary_table(None if effects is None else effects.columns, induction, recall,
                                {by: a.table for by, a in run.ablations.items()},
                                None if run.surprisal is None else run.surprisal.summary, icl=run.icl)
    _csv(run.summary, run.out / "summary.csv")
    atomic_write_text(run.out / "summary.md", _markdown(run.summary))


def run_episodic(subject, out, *, seed: int = 0, settings: dict | None = None, steps=STEPS, top_k: int | None = None,
                 n_random: int = 3, ablate_by=ABLATE_BY, ablation_lists=ABLATION_LISTS, list_lens=LIST_LENGTHS, intervening=("short", "longest"),
                 n_lists: int = 20, scramble: bool = True, icl_text=None, icl_windows: int = 16,
                 report: bool = True) -> EpisodicRun:
    """Run the chosen steps ('heads', 'ablation', 'surprisal') and write every result into ``out`` as it finishes.

    The ablation step zeroes the top-k heads by induction score and/or CMR distance (``ablate_by``) against
    ``n_random`` random sets, on the temporal lists and/or the CMR random-token lists (``ablation_lists``), and,
    given a natural text file ``icl_text``, compares the ICL score on ``icl_windows`` 501-token windows of it.
    The HTML report is rewritten after every step.
    """
    from ..scanning import scan

    unknown = set(steps) - set(STEPS)
    if unknown or not steps:
        raise InputError(f"steps must be some of {', '.join(STEPS)}, got {', '.join(map(str, steps)) or 'none'}")
    if "ablation" in steps and "heads" not in steps:
        raise InputError("the ablation step ranks heads by the heads step: include 'heads'")
    bad = set(ablate_by) - set(ABLATE_BY)
    if bad:
        raise InputError(f"ablate_by must be some of {', '.join(ABLATE_BY)}, got {', '.join(sorted(bad))}")
    bad = set(ablation_lists) - set(ABLATION_LISTS)
    if bad or not ablation_lists:
        raise InputError(f"ablation_lists must be some of {', '.join(ABLATION_LISTS)}, got {', '.join(sorted(bad)) or 'none'}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = EpisodicRun(out)
    settings = dict(settings or {})
    induction = None
    if "heads" in steps:
        t0 = time.time()
        atlas = scan(subject, ["induction"], seed=seed, settings=settings)
        induction = atlas.matrix("induction")
        run.effects = head_effects(subject, seed=seed, settings=settings)
        for name, values in run.effects.columns.items():
            col = COLUMNS[name]
            atlas = atlas.with_scores(name, values, definition=col.definition, source=col.source, range=col.range)
        meta = atlas.meta.get("stimuli", {})
        run.atlas = atlas.with_meta(stimuli={**meta, **{f"episodic_{k}": v for k, v in run.effects.stimuli.items()}},
                                    episodic_settings=run.effects.settings)
        run.atlas.save(out)
        _save_curves(run.effects, out / "curves.npz")
        run.seconds["heads"] = round(time.time() - t0, 1)
        _finish_step(run, subject, induction, report)
    if "ablation" in steps:
        s = run.effects.settings
        designs = {"temporal": lambda: frequent_token_lists(subject, s["temporal_items"], s["temporal_batch"], seed),
                   "random": lambda: random_token_lists(subject, s["cmr_items"], s["cmr_batch"], seed)}
        k = top_k or max(1, round(0.1 * subject.n_layers * subject.n_heads))
        ranks = {"induction": top_heads(induction, k), "cmr": top_heads(run.effects.columns["cmr_distance"], k,
                                                                          largest=False)}
        for design in ablation_lists:
            lists = designs[design]()
            for by in ablate_by:
                t0 = time.time()
                path = out / f"ablation_{by}_{design}.csv"
                run.ablations[f"{by}, {design} lists"] = contiguity_ablation(
                    subject, lists, ranks[by], n_random=n_random, seed=seed, batch_size=s["batch_size"],
                    on_condition=lambda t, p=path: _csv(t, p))
                run.seconds[f"ablation_{by}_{design}"] = round(time.time() - t0, 1)
                _finish_step(run, subject, induction, report)
        if icl_text is not None:
            from ..stimuli import read_text

            windows = text_windows(subject, read_text(icl_text), icl_windows, 501, seed)
            for by in ablate_by:
                t0 = time.time()
                run.icl[by] = icl_score_ablation(subject, windows, ranks[by], n_random=n_random, seed=seed,
                                                 batch_size=s["batch_size"])
                _csv(run.icl[by], out / f"icl_{by}.csv")
                run.seconds[f"icl_{by}"] = round(time.time() - t0, 1)
                _finish_step(run, subject, induction, report)
    if "surprisal" in steps:
        t0 = time.time()
        run.surprisal = verbatim_experiment(
            subject, list_lens=list_lens, conditions=CONDITIONS, intervening=intervening,
            scramble=(False, True) if scramble else (False,), n_lists=n_lists, seed=seed,
            batch_size=settings.get("batch_size"), on_cell=lambda t: _csv(t, out / "surprisal_prompts.csv"))
        _csv(run.surprisal.prompts, out / "surprisal_prompts.csv")
        _csv(run.surprisal.summary, out / "surprisal_summary.csv")
        _csv(run.surprisal.timecourse, out / "surprisal_timecourse.csv")
        run.seconds["surprisal"] = round(time.time() - t0, 1)
        _finish_step(run, subject, induction, report)
    return run


def _finish_step(run: EpisodicRun, subject, induction, report: bool) -> None:
    """Rewrite the summary and (if asked) the HTML report after a step, so a crash keeps everything finished."""
    _write_summary(run, induction)
    if report:
        from .report import write_episodic_report

        write_episodic_report(run, subject, run.out / "episodic.html")
