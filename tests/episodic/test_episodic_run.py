"""``workbench episodic`` end to end on a tiny model folder: every file written, the report, bad input, and the
surprisal step on smollm2-135m."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.atlas import Atlas
from workbench.cli import main
from workbench.episodic.detector import COLUMNS
from workbench.episodic.run import run_episodic




def test_cli_writes_atlas_curves_ablations_and_report(tiny_folder, tmp_path, capsys):
    out = tmp_path / "run"
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"w{i % 60}" for i in range(600)))
    assert main(["episodic", "--model", str(tiny_folder), "--out", str(out), "--steps", "heads,ablation",
                 "--cmr-items", "8", "--temporal-items", "8", "--batch", "3", "--top-k", "1", "--random-sets", "1",
                 "--ablate-by", "induction", "--ablation-lists", "random", "--icl-text", str(text),
                 "--icl-windows", "2"]) == 0
    printed = capsys.readouterr().out
    assert "CMR-like heads (distance < 0.5)" in printed and str(out / "episodic.html") in printed
    atlas = Atlas.load(out)
    assert {"induction", *COLUMNS} <= set(atlas.table.columns)
    assert atlas.matrix("cmr_distance").shape == (2, 4) and "episodic_cmr" in atlas.meta["stimuli"]
    with np.load(out / "curves.npz") as z:
        assert z["score_mean"].shape == (2, 4, 16) and z["fit_curve"].shape == (2, 4, 11)
        assert z["crp_lags"].tolist() == list(range(-7, 8)) and z["crp"].shape == (2, 4, 15)  # 8 items: |lag| <= 7
    table = pd.read_csv(out / "ablation_induction_random.csv")
    assert list(table["condition"]) == ["intact", "top", "random-0"] and (table["n_ablated"] == [0, 1, 1]).all()
    icl = pd.read_csv(out / "icl_induction.csv")
    assert list(icl["condition"]) == ["intact", "top", "random-0"] and np.isfinite(icl["icl_score"]).all()
    summary = pd.read_csv(out / "summary.csv")
    assert "ICL score, ablation by induction" in set(summary["section"])
    assert "ablation by induction, random lists" in set(summary["section"])
    assert {"P(next = study item at lag +1), random tokens x 2 (same order)",
            "P(next = study item at lag +1), temporal lists (test order permuted)"} <= set(summary["metric"])
    html = (out / "episodic.html").read_text()
    assert "Episodic memory in attention" in html and "CMR-like heads per layer" in html and "Ablation by" in html
    assert not list(out.glob("*.tmp*"))


def test_bad_input_is_one_line(tiny_folder, tmp_path, capsys):
    assert main(["episodic", "--model", str(tiny_folder), "--out", str(tmp_path), "--steps", "ablation"]) == 2
    assert "include 'heads'" in capsys.readouterr().err
    assert main(["episodic", "--model", str(tiny_folder), "--out", str(tmp_path), "--steps", "dream"]) == 2
    assert "steps must be some of" in capsys.readouterr().err
    assert main(["episodic", "--model", str(tiny_folder), "--list-lens", "3,x"]) == 2


@pytest.mark.model
def test_surprisal_step_writes_tables_and_report(smollm2, tmp_path):
    run = run_episodic(smollm2, tmp_path, steps=("surprisal",), list_lens=(3,), intervening=("short", "medium"),
                       n_lists=2, scramble=True)
    summary = pd.read_csv(tmp_path / "surprisal_summary.csv")
    assert len(summary) == 3 * 2 * 2 and set(summary["intervening"]) == {"short", "medium"}
    assert len(pd.read_csv(tmp_path / "surprisal_prompts.csv")) == 24
    assert set(run.summary["section"]) == {"repeat surprisal"}
    assert "Repeat surprisal by intervening-text length" in (tmp_path / "episodic.html").read_text()
