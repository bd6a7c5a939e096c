"""The shipped checkpoint ``toy-induction-2l``: a layer-1 induction head above 0.9 whose previous-token partner in
layer 0 is found by ablation, and its training run's tables show the phase change."""

from pathlib import Path

import pytest

import workbench as wb
from workbench.toy.partners import previous_token_partners
from workbench.toy.trajectory import load_run, summary

RUN = Path(__file__).resolve().parents[2] / "data" / "toy" / "toy-induction-2l"


@pytest.fixture(scope="module")
def toy2l():
    return wb.load("toy-induction-2l", device="cpu")


def test_top_head_is_an_induction_head_with_its_previous_token_partner(toy2l):
    assert "toy-induction-2l" in wb.list_models()
    atlas = wb.scan(toy2l, ["previous_token", "induction"], seed=0)  # default stimulus: 50 tokens x 2, batch 10
    top = atlas.top("induction", 1).iloc[0]
    assert top["layer"] == 1 and top["induction"] > 0.9
    partners = previous_token_partners(toy2l, (1, int(top["head"])))
    best = partners.iloc[0]
    assert best["layer"] == 0 and best["previous_token"] > 0.8  # the partner is a previous-token head ...
    assert best["induction_ablated"] < 0.2 and best["drop"] > 0.7  # ... and the induction head needs it
    assert (partners["drop"].iloc[1:] < 0.5).all()
    assert atlas.matrix("previous_token")[0, int(best["head"])] == pytest.approx(best["previous_token"], abs=1e-6)


def test_shipped_run_tables_show_the_phase_change():
    run = load_run(RUN)
    info = summary(run)
    assert info["phase_change"] is not None and 150 < info["phase_change"]["step"] < 400
    assert info["phase_change"]["early"] > 3.9 and info["phase_change"]["final"] < 0.2
    induction = run.scores("induction")
    assert induction.loc[199].max() < 0.1 and induction.loc[1500].max() > 0.9
    assert len(run.steps) == 29 and not run.lag.empty
