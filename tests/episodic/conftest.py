"""Fixtures for the episodic tests: the authors' arrays from ../shared/data/icl-cmr (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(os.environ.get("WORKBENCH_SHARED", Path(__file__).resolve().parents[2] / ".." / "shared")).resolve()
ICL_CMR = SHARED / "data" / "icl-cmr"


def _need(name: str) -> Path:
    path = ICL_CMR / name
    if not path.is_file():
        pytest.skip(f"authors' array {path} is absent (set WORKBENCH_SHARED to the folder holding data/icl-cmr)")
    return path


@pytest.fixture(scope="session")
def authors_grid():
    from workbench.episodic.cmr import load_grid

    return load_grid(_need("cmr_crp_grid.npz"))


@pytest.fixture(scope="session")
def gpt2_scores():
    with np.load(_need("gpt2-small_head_scores.npz"), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def our_grid():
    from workbench.episodic.cmr import DEFAULT_GRID_PATH, load_grid

    if not DEFAULT_GRID_PATH.is_file():
        pytest.skip(f"our grid {DEFAULT_GRID_PATH} is absent: python -m workbench.episodic.cmr --make-grid {DEFAULT_GRID_PATH}")
    return load_grid(DEFAULT_GRID_PATH)
