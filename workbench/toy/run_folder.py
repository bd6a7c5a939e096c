"""The layout of a toy training run folder, shared by training (``train.py``) and scoring (``trajectory.py``).

``train_config.json``, ``checkpoints/step-0000123/`` (weights, HF config, tokenizer, ``state.json``,
``optimizer.safetensors``; complete when ``state.json`` is there), ``log.parquet``, ``evals.parquet``, and the
per-checkpoint tables of ``trajectory.py``. Tables are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..io import atomic_write

CONFIG_FILE, LOG_FILE, EVAL_FILE = "train_config.json", "log.parquet", "evals.parquet"
CHECKPOINTS = "checkpoints"
STATE_FILE, OPTIMIZER_FILE = "state.json", "optimizer.safetensors"


def read_config(run_dir: str | Path) -> dict:
    """The run's training config as written (``train_config.json``)."""
    return json.loads((Path(run_dir) / CONFIG_FILE).read_text())


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    """The folder of the checkpoint at ``step``: ``checkpoints/step-0000123``."""
    return Path(run_dir) / CHECKPOINTS / f"step-{step:07d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, folder), in step order."""
    root = Path(run_dir) / CHECKPOINTS
    found = []
    for folder in root.glob("step-*") if root.is_dir() else []:
        if (folder / STATE_FILE).is_file() and folder.name[5:].isdigit():
            found.append((int(folder.name[5:]), folder))
    return sorted(found)


def write_table(path: Path, frame: pd.DataFrame) -> None:
    """Write a DataFrame as Parquet atomically."""
    atomic_write(path, lambda p: frame.to_parquet(p, index=False))


def read_table(path: Path) -> pd.DataFrame:
    """A Parquet table, or an empty DataFrame when the file does not exist yet."""
    return pd.read_parquet(path) if Path(path).is_file() else pd.DataFrame()
