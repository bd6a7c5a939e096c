"""Bootstrap intervals: coverage at the nominal rate on synthetic scores, per-item values behind every default
score, and intervals absent (never invented) where no per-item values exist."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.atlas import Atlas
from workbench.errors import InputError
from workbench.scores import (ItemScores, duplicate_token_items, duplicate_token_score, induction_items,
                              induction_score, item_mean)
from workbench.scores.intervals import Bootstrap, bootstrap_interval, bootstrap_means, expanded_level
from tests.conftest import tiny_llama
from tests.test_scan import SMALL

DESCRIBE = {"definition": "a test score", "source": "this test", "range": "[0, 1]"}


def coverage(values, truth, weights=None, method="expanded", seed=1) -> float:
    """Share of simulated data sets (values[:, d]) whose 95% interval holds the true mean."""
    lo, hi = bootstrap_interval(values, weights, resamples=1000, level=0.95, seed=seed, method=method)
    return float(((lo <= truth) & (truth <= hi)).mean())


def test_expanded_interval_covers_a_known_mean_at_the_nominal_rate():
    # 4000 seeded data sets of 10 items each, item scores ~ N(0.3, 0.1^2): the true score is 0.3.
    # Binomial SE of a coverage estimate near 0.95 over 4000 sets: 0.0035; the simulation is seeded (deterministic).
    values = np.random.default_rng(0).normal(0.3, 0.1, (10, 4000))
    expanded = coverage(values, 0.3)
    assert 0.935 <= expanded <= 0.965, expanded  # measured 0.947
    # the plain percentile interval is too narrow at 10 items (~sqrt(9/10) z vs t_9): the test can tell them apart
    assert coverage(values, 0.3, method="percentile") < 0.925  # measured 0.897


def test_weighted_items_cover_the_pooled_mean():
    # items of unequal size (queries per sequence): item means have variance sigma^2 / w, the score is their
    # w-weighted mean (a ratio estimator under resampling); true value 0.3
    rng = np.random.default_rng(5)
    w = rng.integers(3, 40, 12).astype(float)
    values = rng.normal(0.3, 0.2 / np.sqrt(w)[:, None], (12, 4000))
    assert 0.93 <= coverage(values, 0.3, weights=w) <= 0.965  # measured 0.942
    # the interval holds the weighted mean and shrinks as items are added
    one = values[:, 0]
    lo, hi = bootstrap_interval(one, w)
    assert lo < np.average(one, weights=w) < hi


def test_bootstrap_is_seeded_and_never_draws_weightless_items():
    values = np.array([0.1, 0.2, 0.3, 100.0])
    a = bootstrap_means(values, [1, 1, 1, 0], resamples=500, seed=3)
    assert np.array_equal(a, bootstrap_means(values, [1, 1, 1, 0], resamples=500, seed=3))
    assert not np.array_equal(a, bootstrap_means(values, [1, 1, 1, 0], resamples=500, seed=4))
    assert a.max() <= 0.3 + 1e-12 and a.min() >= 0.1 - 1e-12  # the weight-0 item (100.0) is never drawn
    items = ItemScores(values[:, None], [1, 1, 1, 0], "sequences")
    assert items.n_items == 3 and items.mean() == pytest.approx([0.2])
    # Hesterberg's expansion: n = 10 -> z = sqrt(10/9) t_9(0.975) = 2.383 -> level 0.983
    assert expanded_level(0.95, 10) == pytest.approx(0.9828, abs=1e-4)
    with pytest.raises(InputError, match="at least 2 items"):
        bootstrap_interval([0.5, 0.7], [1, 0])
    with pytest.raises(InputError, match="one number per item"):
        ItemScores(np.zeros((3, 2)), [1, 1], "sequences")
    with pytest.raises(InputError, match="method"):
        Bootstrap(method="bca")


def test_per_sequence_items_pool_to_the_score():
    g = torch.Generator().manual_seed(0)
    n = 9
    s = torch.randn(3, 4, n, n, generator=g, dtype=torch.float64).masked_fill(
        torch.triu(torch.ones(n, n, dtype=torch.bool), 1), float("-inf"))
    pats = torch.softmax(s, -1)  # (H=3, B=4, N, N)
    ids = torch.tensor([[1, 5, 6, 5, 7, 6, 5, 8, 9]] * 2 + [[1, 5, 6, 7, 8, 9, 10, 5, 11]] * 2)
    values, counts = duplicate_token_items(pats, ids)
    assert values.shape == (3, 4) and counts.tolist() == [3, 3, 1, 1]  # queries with an earlier copy of their token
    for b in range(4):  # each item is that sequence's own score
        assert torch.allclose(values[:, b], duplicate_token_score(pats[:, b:b + 1], ids[b:b + 1]))
    assert torch.allclose(item_mean(values, counts), duplicate_token_score(pats, ids))
    targets = torch.full((4, n), -1)
    targets[:, 5:] = torch.tensor([2, 3, 4, 5])
    v, c = induction_items(pats, targets)
    assert torch.allclose(item_mean(v, c), induction_score(pats, targets))
    it = ItemScores.from_tensor(v, c)
    assert it.values.shape == (4, 3) and np.allclose(it.mean(), induction_score(pats, targets).numpy())


def test_scan_gives_every_default_score_an_interval_over_its_items(tmp_path):
    subject = tiny_llama(seed=1)
    atlas = wb.scan(subject, seed=3, settings=SMALL)
    units = {"previous_token": ("sequences", 3), "duplicate_token": ("sequences", 3), "induction": ("sequences", 3),
             "copying": ("sequences", 2), "sink_rate": ("prompts", 4), "sink_mass": ("prompts", 4)}
    for name, (unit, items) in units.items():
        info = atlas.interval_info(name)
        assert info["unit"] == unit and info["items"] == items and info["resamples"] == 1000, name
        assert info["level"] == 0.95 and info["seed"] == 3 and info["method"].startswith("expanded")
        lo, hi = atlas.interval(name)
        m = atlas.matrix(name)
        assert np.all(lo <= m + 1e-12) and np.all(m <= hi + 1e-12), name
    assert atlas.score_columns == list(units)  # the bounds are not scores of their own
    top = atlas.top("induction", 3)
    assert list(top.columns[4:7]) == ["induction", "induction_lo", "induction_hi"]
    loaded = Atlas.load(atlas.save(tmp_path))
    assert loaded.interval_info("induction") == atlas.interval_info("induction")
    assert np.array_equal(loaded.interval("copying")[0], atlas.interval("copying")[0])
    # seeded: the same scan gives the same bounds; resamples 0 turns them off and says so
    again = wb.scan(subject, seed=3, settings=SMALL)
    assert np.array_equal(again.interval("sink_mass")[1], atlas.interval("sink_mass")[1])
    off = wb.scan(subject, seed=3, settings={**SMALL, "interval_resamples": 0})
    assert off.interval("induction") is None and "induction_lo" not in off.table
    assert off.meta["columns"]["induction"]["no_interval"] == "not computed (bootstrap off)"
    assert np.array_equal(off.matrix("induction"), atlas.matrix("induction"))


def test_intervals_are_absent_not_invented_without_per_item_values():
    subject = tiny_llama(seed=1)
    # one sequence for copying: one item, so no interval (and the metadata says why)
    atlas = wb.scan(subject, ["induction", "copying"], seed=0, settings={**SMALL, "copy_batch": 1})
    assert atlas.interval("copying") is None and "copying_lo" not in atlas.table
    assert atlas.meta["columns"]["copying"]["no_interval"] == "fewer than 2 items (1 sequences)"
    assert atlas.interval("induction") is not None
    # a plain (layers, heads) array has no items: no bounds, none in top(), the report says so
    plain = atlas.with_scores("fit", np.full((2, 4), 0.5), **DESCRIBE)
    assert plain.interval("fit") is None and plain.interval_info("fit") is None
    assert list(plain.top("fit", 2).columns[4:5]) == ["fit"] and "fit_lo" not in plain.top("fit", 2)
    assert "No interval: no per-item values" in plain._description("fit")
    with pytest.raises(InputError, match="has no interval"):
        plain.heads("fit", 0.3, confident=True)
    # replacing a score by plain values drops its old bounds; so does merging in a plain column
    replaced = atlas.with_scores("induction", np.zeros((2, 4)), **DESCRIBE)
    assert replaced.interval("induction") is None and "induction_lo" not in replaced.table
    other = Atlas(replaced.table[["layer", "head", "kv_group", "layer_type", "induction"]], replaced.meta)
    merged = atlas.merge(other)
    assert merged.interval("induction") is None and "induction_hi" not in merged.table
    assert merged.interval("copying") is None and "copying_lo" not in merged.table


def test_given_bounds_need_their_description_and_an_order():
    atlas = Atlas.for_model(2, 2, 1, ["full", "full"], {"model": "m"})
    v = np.array([[0.2, 0.5], [0.1, 0.9]])
    with pytest.raises(InputError, match="both lo and hi"):
        atlas.with_scores("s", v, lo=v - 0.1, **DESCRIBE)
    with pytest.raises(InputError, match="both lo and hi"):
        atlas.with_scores("s", v, lo=v - 0.1, hi=v + 0.1, **DESCRIBE)  # no interval= description
    with pytest.raises(InputError, match="lo > hi"):
        atlas.with_scores("s", v, lo=v + 0.1, hi=v - 0.1, interval={"method": "given"}, **DESCRIBE)
    a = atlas.with_scores("s", v, lo=v - 0.1, hi=v + 0.1, interval={"method": "given", "level": 0.9}, **DESCRIBE)
    assert a.heads("s", 0.45) == [(1, 1), (0, 1)]
    assert a.heads("s", 0.45, confident=True) == [(1, 1)]  # L0H1: 0.5 [0.4, 0.6] is not surely above 0.45
    assert a.heads("s", 0.15, above=False) == [(1, 0)]
    assert a.heads("s", 0.15, above=False, confident=True) == []  # L1H0: 0.1 [0.0, 0.2] is not surely below 0.15
    with pytest.raises(InputError, match="interval bound"):
        a.with_scores("s_lo", v, **DESCRIBE)
    with pytest.raises(InputError, match="lacks s_lo"):
        Atlas(a.table.drop(columns=["s_lo"]), a.meta)


def test_views_show_the_intervals(tmp_path):
    subject = tiny_llama(seed=1)
    atlas = wb.scan(subject, ["induction", "sink"], seed=0, settings=SMALL)
    figures = atlas.plot(["induction"], k=3)
    assert set(figures) == {"induction", "top_induction", "interval_induction"}
    lo, hi = atlas.interval("induction")
    hover = figures["induction"].data[0].text[1][2]
    assert f"induction: {atlas.matrix('induction')[1, 2]:.3g} [{lo[1, 2]:.3g}, {hi[1, 2]:.3g}]" in hover
    assert list(figures["top_induction"].data[0].header["values"])[-2:] == ["induction_lo", "induction_hi"]
    bars = figures["interval_induction"].data[0]
    top = atlas.top("induction", 3)
    assert list(bars.x) == pytest.approx(top["induction"].tolist())
    assert list(bars.error_x.array) == pytest.approx((top["induction_hi"] - top["induction"]).tolist())
    assert "95% expanded percentile bootstrap" in figures["interval_induction"].layout.title.text
    html = atlas.to_html(tmp_path / "r.html").read_text()
    assert "Interval (induction_lo, induction_hi): 95% expanded percentile bootstrap" in html
    assert "[" in atlas._repr_html_()


def test_explorer_lists_each_scores_interval():
    from workbench.viz import format_interval
    from workbench.widgets import HeadExplorer

    subject = tiny_llama(seed=1)
    atlas = wb.scan(subject, ["induction"], seed=0, settings=SMALL).with_scores("plain", np.full((2, 4), 0.25),
                                                                               **DESCRIBE)
    e = HeadExplorer(atlas, subject, head=(1, 2), background=False)
    lo, hi = atlas.interval("induction")
    assert format_interval(lo[1, 2], hi[1, 2]) in e.head_info.value
    assert e.head_info.value.count("[") == 1  # 'plain' has no interval and shows none


# ------------------------------------------------------------------------------------------------ test-retest
def test_retest_matches_spearman_and_lists_the_flipping_heads():
    from scipy.stats import spearmanr

    from workbench.replicates import retest

    base = Atlas.for_model(2, 3, 3, ["full", "full"], {"model": "m"})
    a = np.array([[0.05, 0.2, 0.5], [0.31, 0.9, 0.0]])
    b = np.array([[0.06, 0.28, 0.45], [0.27, 0.8, 0.01]])  # L1H0 drops below 0.3; ranks of L0H1/L1H0 swap
    atlases = [base.with_scores("induction", m, **DESCRIBE).with_scores("other", m ** 2, **DESCRIBE) for m in (a, b)]
    out = retest(atlases)
    assert out["induction"]["spearman_mean"] == pytest.approx(spearmanr(a.ravel(), b.ravel()).statistic, abs=1e-4)
    assert out["induction"]["n_past"] == [3, 2] and out["induction"]["n_flips"] == 1
    assert out["induction"]["flips"] == {"L1H0": [0.31, 0.27]}
    assert out["induction"]["spearman_mean"] == pytest.approx(1 - 6 * 2 / (6 * 35), abs=1e-4)  # one swap: 0.943
    past = np.array([False, False, True, True, True, False])  # past 0.3 in either replicate: L0H2, L1H0, L1H1
    assert out["induction"]["spearman_past_mean"] == pytest.approx(
        spearmanr(a.ravel()[past], b.ravel()[past]).statistic, abs=1e-4)
    assert out["induction"]["spearman_past_mean"] == 1.0  # the swap is among heads below the threshold
    assert "threshold" not in out["other"] and out["other"]["spearman_mean"] == out["induction"]["spearman_mean"]
    with pytest.raises(InputError, match="at least 2 replicates"):
        retest(atlases[:1])


def test_scan_replicates_records_the_retest_and_the_report_shows_it(tmp_path):
    from workbench.replicates import retest, scan_replicates

    subject = tiny_llama(seed=1)
    rep = scan_replicates(subject, 3, detectors=["induction", "sink"], seed=5, settings=SMALL)
    assert rep.seeds == [5, 6, 7] and [a.meta["seed"] for a in rep.atlases] == [5, 6, 7]
    assert np.array_equal(rep.atlas.matrix("induction"), wb.scan(subject, ["induction"], seed=5,
                                                                 settings=SMALL).matrix("induction"))
    assert rep.atlas.meta["test_retest"] == retest(rep.atlases) == rep.retest
    assert len(rep.retest["induction"]["pairs"]) == 3 and -1 <= rep.retest["induction"]["spearman_min"] <= 1
    assert rep.retest["sink_mass"]["threshold"] == 0.3
    html = rep.atlas.to_html(tmp_path / "r.html").read_text()
    assert "Test-retest" in html and "stimulus seeds [5, 6, 7]" in html
    with pytest.raises(InputError, match="replicates must be an integer >= 2"):
        scan_replicates(subject, 1)


def test_cli_scan_replicates_and_intervals(tmp_path, tiny_folder, capsys):
    from workbench.cli import main

    out = tmp_path / "scan"
    argv = ["scan", "--model", str(tiny_folder), "--detectors", "induction", "--batch", "3", "--seq-len", "12",
            "--replicates", "2", "--intervals", "200", "--interval-level", "0.9", "--out", str(out)]
    assert main(argv) == 0
    assert "test-retest induction: Spearman" in capsys.readouterr().out
    atlas = Atlas.load(out)
    assert atlas.meta["replicate_seeds"] == [0, 1] and "induction" in atlas.meta["test_retest"]
    second = Atlas.load(out / "replicates" / "seed-1")  # every replicate is saved as it finishes
    assert second.meta["seed"] == 1 and not np.array_equal(second.matrix("induction"), atlas.matrix("induction"))
    assert atlas.interval_info("induction")["resamples"] == 200 and atlas.interval_info("induction")["level"] == 0.9
    assert main(["scan", "--model", str(tiny_folder), "--interval-level", "1.5", "--out", str(tmp_path / "x")]) == 2
    assert "between 0 and 1" in capsys.readouterr().err


def test_retrieval_items_are_the_correct_tests_per_family():
    import pandas as pd

    from workbench.retrieval.niah import NiahRun

    rng = np.random.default_rng(2)
    scores = rng.uniform(size=(6, 2, 3))
    table = pd.DataFrame({"kind": ["number", "code", "number", "code", "number", "code"],
                          "correct": [True, True, False, True, True, False]})
    run = NiahRun(table, scores)
    items = run.retrieval_items()
    assert items.n_items == 4 and np.allclose(items.mean(), run.retrieval_scores())
    assert np.allclose(run.retrieval_items("number").mean(), scores[[0, 4]].mean(0))
    assert np.allclose(run.retrieval_items("code").mean(), scores[[1, 3]].mean(0))
    assert np.isnan(NiahRun(table.assign(correct=False), scores).retrieval_items().mean()).all()
    atlas = Atlas.for_model(2, 3, 3, ["full", "full"], {}).with_scores("retrieval", items, **DESCRIBE)
    assert atlas.interval_info("retrieval")["items"] == 4
    assert atlas.interval_info("retrieval")["unit"] == "NIAH tests answered correctly"
