"""Heads through training: score every checkpoint of a run into per-checkpoint atlas tables, and read them back.

Per run folder (see :mod:`workbench.toy.train`):

- ``atlas.parquet``: one row per (checkpoint step, layer, head) with the Atlas columns of the chosen detectors
  (``wb.scan``) and, when ``workbench.episodic`` and its CMR grid are available, the CMR fit of each head's lag
  curve (``cmr_distance``, ``cmr_beta_enc``, ``cmr_beta_rec``, ``cmr_gamma_ft``); ``atlas.json`` describes the
  columns and the stimuli.
- ``lag_crp.parquet``: one row per (step, layer, head, lag): the mean pre-softmax score at key ``p + lag`` for
  queries in the second presentation whose token first occurred at ``p`` (Ji-An et al. 2024) with its SEM, and
  the mean attention weight there (Mistry et al. 2025's lag-CRP of attention).

Rows are appended as each checkpoint is scored (atomic rewrites), so an interrupted scoring resumes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.special import expit

from ..errors import InputError
from ..io import atomic_write_json
from ..progress import progress
from .run_folder import CONFIG_FILE, EVAL_FILE, LOG_FILE, list_checkpoints, read_config, read_table, write_table

ATLAS_FILE, ATLAS_META, LAG_FILE = "atlas.parquet", "atlas.json", "lag_crp.parquet"
CMR_COLUMNS = {
    "cmr_distance": ("CMR distance mean((c'-a')^2)/var(a') of the head's lag curve (pre-softmax scores, lags -5..5) "
                     "to the best CMR grid CRP; CMR-like below 0.5", "Ji-An et al. 2024 (workbench.episodic.fit_cmr)",
                     "[0, inf)"),
    "cmr_beta_enc": ("beta_enc of the best CMR fit", "Ji-An et al. 2024", "[0, 1]"),
    "cmr_beta_rec": ("beta_rec of the best CMR fit", "Ji-An et al. 2024", "[0, 1]"),
    "cmr_gamma_ft": ("gamma_FT of the best CMR fit", "Ji-An et al. 2024", "[0, 1]"),
}


@dataclass
class ScoreConfig:
    """Which scores each checkpoint gets: scan detectors (with their settings) and the lag-CRP / CMR fit."""

    detectors: list = field(default_factory=lambda: ["previous_token", "duplicate_token", "induction", "copying",
                                                     "sink"])
    seed: int = 0
    settings: dict = field(default_factory=dict)  # wb.scan settings (seq_len, n_repeats, batch, ...)
    lag_crp: bool = True
    lag_seq_len: int = 50
    lag_batch: int = 10
    max_lag: int = 8  # lags -max_lag .. max_lag - 1 (Ji-An et al. 2024 use -8..7)

    @classmethod
    def from_dict(cls, d: dict | None) -> "ScoreConfig":
        d = dict(d or {})
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise InputError(f"unknown scores key(s) {', '.join(sorted(unknown))}: the keys are "
                             f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        out = cls(**d)
        if out.max_lag < 6:
            raise InputError(f"scores.max_lag must be >= 6 (the CMR fit uses lags -5..5), got {out.max_lag}")
        return out


def lag_scores(subject, config: ScoreConfig) -> tuple[pd.DataFrame, dict]:
    """Per-head lag curves on random tokens presented twice (Ji-An et al. 2024), and the CMR fit as columns.

    Uses ``workbench.episodic`` (list capture, lag-curve aggregation, CMR grid fit). Returns the lag table
    (layer, head, lag, score, score_sem, attention, n) and {column: (L, H) array}; the CMR columns are empty, with
    the reason in the table's ``attrs["cmr_skipped"]``, when no CMR grid is available. Attention is the softmax
    weight, or for sigmoid-attention models the sigmoid of the score plus the model's ``sigmoid_bias``.
    """
    from ..episodic.capture import capture_lists
    from ..episodic.cmr_fit import fit_cmr
    from ..episodic.lag_crp import aggregate_lag_curves
    from ..stimuli.lists import random_token_lists

    lists = random_token_lists(subject, config.lag_seq_len, config.lag_batch, config.seed + 7)
    lags = np.arange(-config.max_lag, config.max_lag)
    cap = capture_lists(subject, lists, lags=lags)
    score = aggregate_lag_curves(cap.scores, lags, n_boot=0)
    cfg = subject.model.config
    sigmoid = getattr(cfg, "attention_activation", "softmax") == "sigmoid"
    weights = expit(cap.scores + getattr(cfg, "sigmoid_bias", 0.0)) if sigmoid else cap.attn
    attention = aggregate_lag_curves(weights, lags, n_boot=0)
    layer, head, lag = np.meshgrid(np.arange(subject.n_layers), np.arange(subject.n_heads), lags, indexing="ij")
    table = pd.DataFrame({"layer": layer.ravel(), "head": head.ravel(), "lag": lag.ravel(),
                          "score": score.mean.ravel(), "score_sem": score.sem.ravel(),
                          "attention": attention.mean.ravel(), "n": score.n.ravel()})
    columns = {}
    try:
        fit = fit_cmr(score.mean, lags)
        columns = {"cmr_distance": fit.distance, "cmr_beta_enc": fit.beta_enc, "cmr_beta_rec": fit.beta_rec,
                   "cmr_gamma_ft": fit.gamma_ft}
    except InputError as err:  # no CMR grid on this machine
        table.attrs["cmr_skipped"] = str(err)
    table.attrs["stimulus"] = {**cap.settings, "lags": [int(lags[0]), int(lags[-1])]}
    return table, columns


def score_checkpoint(subject, step: int, config: ScoreConfig, train_data: dict | None = None):
    """Score one checkpoint: the scan's Atlas (plus CMR columns) and the lag-CRP table, both tagged with ``step``.
    Detectors that need the run's training data (``planted``) find it in the scan settings as ``train_data``."""
    from ..scanning import scan

    settings = {**({"train_data": train_data} if train_data else {}), **config.settings}
    atlas = scan(subject, config.detectors, seed=config.seed, settings=settings)
    lag = None
    notes = {}
    if config.lag_crp:
        try:
            lag, columns = lag_scores(subject, config)
        except InputError as err:
            notes["lag_crp_skipped"] = str(err)
        else:
            for name, values in columns.items():
                definition, source, range_ = CMR_COLUMNS[name]
                atlas = atlas.with_scores(name, values, definition=definition, source=source, range=range_)
            if "cmr_skipped" in lag.attrs:
                notes["cmr_skipped"] = lag.attrs["cmr_skipped"]
            notes["lag_stimulus"] = lag.attrs["stimulus"]
            lag = lag.assign(step=step)
    atlas = atlas.with_meta(step=step, **notes)
    return atlas, lag


def _append(path: Path, rows: pd.DataFrame, step: int) -> pd.DataFrame:
    """Replace ``step``'s rows of the Parquet table at ``path`` by ``rows`` (atomic rewrite); returns the table."""
    old = read_table(path)
    if not old.empty:
        old = old[old["step"] != step]
    table = rows if old.empty else pd.concat([old, rows], ignore_index=True)
    table = table.sort_values([c for c in ("step", "layer", "head", "lag") if c in table.columns], kind="stable")
    write_table(path, table)
    return table


def score_missing(run_dir: str | Path, subject=None, rescore: bool = False, device=None) -> pd.DataFrame:
    """Score every checkpoint of the run that has no rows in its atlas table yet (all of them if ``rescore``)."""
    from ..models import from_pretrained_folder
    run_dir = Path(run_dir)
    config = read_config(run_dir)  # written whole by train(): every TrainConfig field
    scores = ScoreConfig.from_dict(config["scores"])
    table = read_table(run_dir / ATLAS_FILE)
    done = set() if rescore or table.empty else set(table["step"].unique().tolist())
    todo = [(s, f) for s, f in list_checkpoints(run_dir) if s not in done]
    if not todo:
        return table
    if subject is None:
        from . import ToyForCausalLM  # noqa: F401  (registers the architecture)

        subject = from_pretrained_folder(config["name"], todo[0][1], device=device)
    from safetensors.torch import load_file

    current = {k: v.detach().clone() for k, v in subject.model.state_dict().items()}
    meta = {}
    try:
        for step, folder in progress(todo, desc="score checkpoints", unit="ckpt", leave=False):
            weights = load_file(str(folder / "model.safetensors"), device=str(subject.device))
            subject.model.load_state_dict(weights, strict=False)
            subject.model.eval()
            atlas, lag = score_checkpoint(subject, step, scores, config["data"])
            table = _append(run_dir / ATLAS_FILE, atlas.table.assign(step=step), step)
            if lag is not None:
                _append(run_dir / LAG_FILE, lag, step)
            meta = atlas.meta
    finally:
        subject.model.load_state_dict(current)
    atomic_write_json(run_dir / ATLAS_META, {**meta, "model": config["name"], "scores": dataclasses.asdict(scores)})
    return table


# ------------------------------------------------------------------ reading a run
@dataclass
class Run:
    """A training run's tables: per-step log, per-checkpoint evals, atlas and lag-CRP tables, config."""

    path: Path
    config: dict
    log: pd.DataFrame
    evals: pd.DataFrame
    atlas: pd.DataFrame
    lag: pd.DataFrame
    meta: dict

    @property
    def steps(self) -> list[int]:
        """Checkpoint steps that have atlas rows."""
        return sorted(self.atlas["step"].unique().tolist()) if not self.atlas.empty else []

    @property
    def score_columns(self) -> list[str]:
        ids = {"step", "layer", "head", "kv_group", "layer_type"}
        return [c for c in self.atlas.columns if c not in ids]

    def scores(self, column: str) -> pd.DataFrame:
        """One score as a (step x head) table; columns are "L{layer}H{head}"."""
        if column not in self.score_columns:
            raise InputError(f"no score {column!r} in this run: choose from {', '.join(self.score_columns)}")
        wide = self.atlas.pivot_table(index="step", columns=["layer", "head"], values=column, dropna=False)
        wide.columns = [f"L{l}H{h}" for l, h in wide.columns]
        return wide

    def checkpoint(self, step: int) -> Path:
        """The folder of the checkpoint at ``step`` (loadable with ``wb.load``)."""
        for s, folder in list_checkpoints(self.path):
            if s == step:
                return folder
        raise InputError(f"no checkpoint at step {step}: the run has steps "
                         f"{[s for s, _ in list_checkpoints(self.path)]}")


def load_run(run_dir: str | Path) -> Run:
    """Read a run folder written by ``workbench train``."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise InputError(f"{run_dir} is not a training run (no {CONFIG_FILE}): pass the --out folder of "
                         "`workbench train`")
    meta_path = run_dir / ATLAS_META
    return Run(run_dir, read_config(run_dir), read_table(run_dir / LOG_FILE),
               read_table(run_dir / EVAL_FILE), read_table(run_dir / ATLAS_FILE), read_table(run_dir / LAG_FILE),
               json.loads(meta_path.read_text()) if meta_path.is_file() else {})


def phase_change(log: pd.DataFrame, column: str = "loss_repeat", window: int = 25) -> dict | None:
    """The step where the smoothed ``column`` first falls halfway from its early level to its final level.

    Early level: median of the first 5% of steps; final: median of the last 5%; smoothing: centred rolling
    median over ``window`` steps. Returns {step, early, final, drop} or None when the loss did not fall by
    more than 10% of its early level (no phase change).
    """
    if log.empty or column not in log.columns:
        return None
    series = log.set_index("step")[column].dropna()
    if len(series) < 20:
        return None
    smooth = series.rolling(window, center=True, min_periods=1).median()
    k = max(1, len(series) // 20)
    early, final = float(series.iloc[:k].median()), float(series.iloc[-k:].median())
    if not early - final > 0.1 * abs(early):
        return None
    crossed = smooth[smooth <= (early + final) / 2]
    return {"step": int(crossed.index[0]), "early": early, "final": final, "drop": early - final}


def onset(run: Run, column: str, layer: int, head: int, fraction: float = 0.5, min_rise: float = 0.1) -> int | None:
    """First checkpoint step where head (layer, head)'s ``column`` reaches ``fraction`` of the way from its first
    to its last value (None if it rises by less than ``min_rise`` over the run)."""
    values = run.scores(column)[f"L{layer}H{head}"].dropna()
    if values.empty or not values.iloc[-1] - values.iloc[0] >= min_rise:
        return None
    level = values.iloc[0] + fraction * (values.iloc[-1] - values.iloc[0])
    return int(values[values >= level].index[0])


def summary(run: Run, columns: Sequence[str] = ("induction", "previous_token", "sink_rate", "cmr_distance"),
            k: int = 3) -> dict:
    """What a run shows: final losses, the phase change of the repeat loss, and the final top heads per score with
    the checkpoint where each rose halfway (lowest heads for ``cmr_distance``, where smaller is more CMR-like)."""
    out = {"run": str(run.path), "steps": run.config.get("steps"), "checkpoints_scored": len(run.steps),
           "phase_change": phase_change(run.log) if "loss_repeat" in run.log.columns else None,
           "final_eval": {} if run.evals.empty else {k_: float(v) for k_, v in run.evals.iloc[-1].items()
                                                      if k_.startswith(("eval_", "heldout_"))},
           "top": {}}
    for column in columns:
        if column not in run.score_columns:
            continue
        last = run.atlas[run.atlas["step"] == run.steps[-1]].dropna(subset=[column])
        best = last.sort_values(column, ascending=column == "cmr_distance").head(k)
        out["top"][column] = [{"head": f"L{int(r['layer'])}H{int(r['head'])}", "value": float(r[column]),
                               "onset_step": None if column == "cmr_distance"
                               else onset(run, column, int(r["layer"]), int(r["head"]))}
                              for r in best.to_dict("records")]
    return out


def format_summary(info: dict) -> str:
    """The summary as short plain-text lines (blank-line separated, for the terminal and the report)."""
    lines = [f"run {info['run']}: {info['steps']} steps, {info['checkpoints_scored']} checkpoints scored"]
    phase = info["phase_change"]
    lines.append("phase change of the repeat loss: " + (
        f"step {phase['step']} ({phase['early']:.3f} -> {phase['final']:.3f} nats)" if phase else "none found"))
    for prefix, label in (("eval_", "final evaluation (fresh training-distribution batch)"),
                          ("heldout_", "final held-out items")):
        values = {k[len(prefix):]: v for k, v in info["final_eval"].items() if k.startswith(prefix)}
        if values:
            lines.append(f"{label}: " + ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
    for column, heads in info["top"].items():
        lines.append(f"top {column}: " + ", ".join(
            f"{h['head']} {h['value']:.3f}" + (f" (rose at step {h['onset_step']})" if h["onset_step"] else "")
            for h in heads))
    return "\n\n".join(lines)


def write_report(run: Run, path: str | Path | None = None) -> Path:
    """A self-contained HTML report of the run: loss curve with the phase change, score trajectories, lag curves."""
    from ..viz.report import write_report as write_html
    from ..viz.training import lag_crp_over_training, loss_curve, score_trajectories

    info = summary(run)
    phase = info["phase_change"]
    sections = [("Summary", format_summary(info)),
                ("Loss", [loss_curve(run.log, phase=phase, evals=run.evals)])]
    for column in ("induction", "previous_token", "sink_rate", "cmr_distance"):
        if column in run.score_columns:
            sections.append((column, [run.meta.get("columns", {}).get(column, {}).get("definition", ""),
                                      score_trajectories(run.atlas, column, phase=phase)]))
    if not run.lag.empty and info["top"].get("induction"):
        figs = []
        for entry in info["top"]["induction"][:2]:
            layer, head = (int(x) for x in entry["head"][1:].split("H"))
            figs.append(lag_crp_over_training(run.lag, layer, head))
        sections.append(("Lag curves of the top induction heads over training", figs))
    path = Path(path) if path else run.path / "trajectory.html"
    return write_html(path, f"Training run: {run.config.get('name', run.path.name)}", sections,
                      {**{k: v for k, v in run.meta.items() if k != "columns"}, "model": run.config.get("name"),
                       "train_config": run.config})
