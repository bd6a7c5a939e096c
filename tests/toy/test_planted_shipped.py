"""The shipped planted models: listed and loadable by name, accurate on held-out items, with ground-truth heads
whose removal breaks the mechanism and spares the control, and the mechanism forming in the shipped run tables."""

from pathlib import Path

import pytest

import workbench as wb
from workbench.cli import main
from workbench.models.registry import LOCAL
from workbench.toy.planted import ground_truth, held_out_items
from workbench.toy.trajectory import load_run

DATA = Path(__file__).resolve().parents[2] / "data" / "toy"
SHIPPED = ("toy-temporal-2l", "toy-conflict-2l", "toy-retrieval-2l")


def test_workbench_models_lists_the_shipped_toy_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in LOCAL:
        assert name in out and name in wb.list_models()
    assert set(SHIPPED) <= set(LOCAL)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_planted_model_has_its_mechanism(name):
    subject = wb.load(name, device="cpu")
    truth = ground_truth(subject, held_out_items(subject))
    mech, ctrl = truth.mechanism, truth.control
    assert truth.intact[mech] >= 0.9 and truth.intact[ctrl] >= 0.95  # held-out accuracy
    assert len(truth.heads) >= 2 and all(layer == 1 for layer, _ in truth.heads)
    assert truth.intact[mech] - truth.ablated[mech] >= 0.6 and truth.intact[ctrl] - truth.ablated[ctrl] <= 0.05
    run = load_run(DATA / name)
    attention = run.scores("planted_attention")
    columns = [f"L{layer}H{head}" for layer, head in truth.heads]
    assert attention.loc[0, columns].max() < 0.15 < 0.3 < attention.iloc[-1][columns].min()  # formed in training
    assert run.evals.iloc[-1][f"heldout_accuracy_{mech}"] >= 0.9
    assert sum(f.stat().st_size for f in (DATA / name).rglob("*") if f.is_file()) < 1_000_000
