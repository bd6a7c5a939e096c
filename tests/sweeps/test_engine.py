"""The batched sweep engine against the obviously-right loop: one forward per cell with one apply() hook."""

import numpy as np
import pytest
import torch

from tests.conftest import tiny_gemma3, tiny_llama
from workbench.errors import InputError
from workbench.interventions import apply
from workbench.sweeps import Mean, Patch, Resample, Zero, ZeroQueries, evaluate_cells, parse_heads, cell_name
from workbench.sweeps.ablations import derangement
from workbench.sweeps.engine import baseline_values
from workbench.sweeps.residual import embed, logits_from, residual
from workbench.tasks import TaskBatch, get_metric, metric_values


def _batch(subject, n=6, length=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, subject.vocab_size, (n, length), generator=g)
    pos = torch.tensor([[length - 3, length - 2]] * n)
    return TaskBatch(ids, torch.ones_like(ids), pos, ids[:, -2:], torch.ones(n, 2, dtype=torch.bool))


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
def test_suffix_from_cached_residual_equals_full_forward(make):
    subject = make(seed=1)
    ids = torch.randint(4, subject.vocab_size, (2, 11))
    mask = torch.ones_like(ids)
    full = subject.logits(ids)
    for start in range(subject.n_layers):
        h = residual(subject, embed(subject, ids), mask, 0, start)
        assert torch.allclose(logits_from(subject, h, mask, start), full, atol=1e-5)
    keep = torch.tensor([3, 7])
    assert torch.allclose(logits_from(subject, embed(subject, ids), mask, 0, keep), full[:, keep], atol=1e-5)


ABLATIONS = [Zero, Mean, lambda: Resample(seed=3), ZeroQueries]


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3])
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_batched_cells_equal_one_forward_per_cell(make, ablation):
    subject = make(seed=2)
    batch = _batch(subject)
    metrics = [get_metric("loss"), get_metric("accuracy")]
    cells = [((l, h),) for l in range(subject.n_layers) for h in range(subject.n_heads)] + [((0, 1), (1, 2))]
    abl = ablation()
    got = {r.heads: r.values for r in evaluate_cells(subject, batch, cells, abl, metrics, max_rows=8)}
    assert set(got) == set(cells)
    base = metric_values(subject, batch, metrics)
    moved = 0
    for cell in cells:
        with apply(subject, *abl.specs(cell, range(len(batch)), torch.arange(len(batch)))):
            want = metric_values(subject, batch, metrics)
        for name in want:
            np.testing.assert_allclose(got[cell][name], want[name], atol=1e-5)
        moved += np.abs(want["loss"] - base["loss"]).max() > 1e-4
    assert moved >= len(cells) - 1  # the ablations do change the loss


def test_ablation_values_are_what_their_definitions_say(llama):
    batch = _batch(llama, n=4)
    from workbench.patterns import capture

    z = capture(llama, batch.input_ids, z=True, patterns=False).z
    mean = Mean()
    mean.prepare(llama, batch, {1}, chunk=3)
    assert torch.allclose(mean.means[1], z[1].mean((0, 1)), atol=1e-6)
    res = Resample(seed=0)
    res.prepare(llama, batch, {1}, chunk=3)
    assert (res.donor != torch.arange(4)).all()
    spec = res.specs(((1, 2),), range(4, 8), torch.arange(4))[0]
    assert spec.rows == (4, 5, 6, 7)
    assert torch.allclose(spec.values[(1, 2)], z[1][res.donor, :, 2], atol=1e-6)
    source = _batch(llama, n=4, seed=9)
    patch = Patch(source)
    patch.prepare(llama, batch, {0}, chunk=4)
    zs = capture(llama, source.input_ids, z=True, patterns=False).z[0]
    assert torch.allclose(patch.specs(((0, 3),), range(2), torch.tensor([2, 0]))[0].values[(0, 3)], zs[[2, 0], :, 3])


def test_derangement_keeps_lengths_and_moves_everyone():
    lengths = [5, 7, 5, 7, 5, 9, 9]
    donor = derangement(lengths, seed=1).numpy()
    assert (donor != np.arange(7)).all()
    assert (np.asarray(lengths)[donor] == lengths).all()
    assert sorted(donor) == list(range(7))
    with pytest.raises(InputError, match="same length"):
        derangement([5, 5, 6], seed=0)


def test_baseline_equals_plain_forward(llama):
    batch = _batch(llama)
    logits = llama.logits(batch.input_ids)
    lp = logits.log_softmax(-1)
    want = -lp[torch.arange(6)[:, None], batch.target_pos, batch.target_ids].mean(1)
    got = baseline_values(llama, batch, [get_metric("loss")], chunk=4)["loss"]
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)


def test_cell_names_round_trip():
    assert parse_heads("L3H1+l2h0") == ((2, 0), (3, 1))
    assert cell_name(((3, 1), (2, 0))) == "L2H0+L3H1"
    assert parse_heads("3.1+L4H2") == ((3, 1), (4, 2))  # the package's one head syntax (workbench.inputs)
    with pytest.raises(InputError, match="L18H6"):
        parse_heads("L3")
