"""The dashboards driven as Python objects on tiny random models: clicks and controls call the same handlers the
browser does, and every number shown must equal what the library computes directly."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import entropy

from tests.conftest import tiny_llama
from workbench.atlas import Atlas
from workbench.errors import InputError
from workbench.interventions import ReplaceHead, ScaleHead, ZeroHead, ZeroQuery, apply, mean_values
from workbench.patterns import capture
from workbench.widgets import AblationPlayground, HeadExplorer, SweepViewer, parse_heads
from workbench.widgets.next_token import compare_next_token, kl_divergence, next_token_figure

TEXT = "w5 w6 w7 w8 w9 w5 w6 w7"
PROMPT = "w10 w11 w12 w13 w10 w11"


@pytest.fixture(scope="module")
def subject():
    return tiny_llama(seed=0)  # 2 layers x 4 query heads, 2 KV heads


@pytest.fixture(scope="module")
def atlas(subject):
    rng = np.random.default_rng(0)
    atlas = Atlas.for_model(subject.n_layers, subject.n_heads, subject.n_kv_heads, subject.layer_types,
                            {"model": subject.name})
    induction = rng.uniform(size=(2, 4))
    induction[1, 3] = 2.0  # the top head
    for name, values in {"induction": induction, "previous_token": rng.uniform(size=(2, 4)),
                         "signed": rng.normal(size=(2, 4))}.items():
        atlas = atlas.with_scores(name, values, definition=f"{name} (test)", source="test", range="any")
    return atlas


def _z(fig) -> np.ndarray:
    return np.array(fig.data[0].z, dtype=float)


# ---------------------------------------------------------------------------------------------- HeadExplorer
def test_explorer_starts_on_the_top_head_with_its_exact_pattern(atlas, subject):
    e = HeadExplorer(atlas, subject, background=False)
    assert e.selected == (1, 3) and e.column.value == "induction"
    np.testing.assert_allclose(_z(e.grid.figure), atlas.matrix("induction"))
    assert [s["x0"] for s in e.grid.figure.layout.shapes] == [2.5]  # the selected head is outlined
    ids = e._prompts[e.prompt.value]
    expected = capture(subject, ids, heads=[(1, 3)]).pattern(1, 3)[0].numpy()
    np.testing.assert_allclose(_z(e.pattern), expected, rtol=1e-6, atol=1e-7)
    assert "L1H3 attention" in e.pattern.layout.title.text
    assert "L1H3" in e.head_info.value and "1 of 8" in e.head_info.value  # rank of its induction score


def test_dropdown_recolours_the_grid(atlas, subject):
    e = HeadExplorer(atlas, subject, background=False)
    before = _z(e.grid.figure)
    e.column.value = "previous_token"
    assert not np.allclose(_z(e.grid.figure), before)
    np.testing.assert_allclose(_z(e.grid.figure), atlas.matrix("previous_token"))
    assert e.grid.figure.layout.title.text.startswith("previous_token")
    e.colour_by("signed")  # both signs: a diverging scale centred on 0
    assert e.grid.figure.data[0].zmid == 0.0
    e.colour_by("induction")
    assert e.grid.figure.data[0].zmid is None  # stale settings are cleared


def test_click_shows_that_heads_pattern_and_scores(atlas, subject):
    e = HeadExplorer(atlas, subject, background=False)
    before = _z(e.pattern)
    e.grid.click(0, 2)  # the message plotly.js sends on a click
    assert e.selected == (0, 2)
    assert "L0H2 attention" in e.pattern.layout.title.text
    ids = e._prompts[e.prompt.value]
    expected = capture(subject, ids, heads=[(0, 2)]).pattern(0, 2)[0].numpy()
    np.testing.assert_allclose(_z(e.pattern), expected, rtol=1e-6, atol=1e-7)
    assert not np.allclose(_z(e.pattern), before)
    rank = int((atlas.matrix("induction") > atlas.matrix("induction")[0, 2]).sum()) + 1
    assert f"{rank} of 8" in e.head_info.value and "KV group 1" in e.head_info.value
    assert [(s["x0"], s["y0"]) for s in e.grid.figure.layout.shapes] == [(1.5, -0.5)]
    # a view opened later (a page reload) draws from the stored full state, not the first one
    np.testing.assert_allclose(np.array(e.pattern._widget_data[0]["z"], dtype=float), expected, rtol=1e-6, atol=1e-7)
    assert e.pattern._widget_layout["title"]["text"] == e.pattern.layout.title.text
    assert [(s["x0"], s["y0"]) for s in e.grid.figure._widget_layout["shapes"]] == [(1.5, -0.5)]
    with pytest.raises(InputError, match="out of range"):
        e.select(2, 0)


def test_prompt_box_reruns_on_new_text_with_token_labels(atlas, subject):
    e = HeadExplorer(atlas, subject, background=False)
    e.text.value = TEXT
    e.run_button.click()
    tokens = subject.to_str_tokens(subject.encode(TEXT))
    assert len(e.pattern.data[0].x) == len(tokens) and all(t in label for t, label in zip(tokens, e.pattern.data[0].x))
    expected = capture(subject, TEXT, heads=[(1, 3)]).pattern(1, 3)[0].numpy()
    np.testing.assert_allclose(_z(e.pattern), expected, rtol=1e-6, atol=1e-7)
    e.run_text(PROMPT)  # a second text replaces the cached one
    assert len(e.pattern.data[0].x) == len(subject.encode(PROMPT))
    with pytest.raises(InputError):
        e.run_text("")


def test_explorer_in_the_background_and_bad_inputs(atlas, subject):
    e = HeadExplorer(atlas, subject).wait()  # worker thread, as in JupyterLab
    e.grid.click(0, 1)
    e.grid.click(0, 0)  # the newer click wins
    e.wait()
    assert "L0H0 attention" in e.pattern.layout.title.text and e.jobs.error is None
    with pytest.raises(InputError, match="no score column"):
        HeadExplorer(atlas, subject, column="nope")
    other = Atlas.for_model(3, 4, 2, ["full"] * 3, {}).with_scores("x", np.zeros((3, 4)), definition="d", source="s",
                                                                   range="r")
    with pytest.raises(InputError, match="pass the Subject the Atlas was computed on"):
        HeadExplorer(other, subject)


def test_lag_crp_panel_shows_the_clicked_heads_curve(atlas, subject):
    pytest.importorskip("workbench.viz.episodic")
    from workbench.episodic import aggregate_lag_curves

    lags = np.arange(-3, 4)
    values = np.random.default_rng(1).normal(size=(5, 2, 4, 6, len(lags)))  # [seq, layer, head, query, lag]
    curve = aggregate_lag_curves(values, lags, n_boot=20)
    e = HeadExplorer(atlas, subject, lag_crp=curve, background=False)
    shown = [t for t in e.lag_figure.data if t.mode == "lines+markers"]
    np.testing.assert_allclose(np.array(shown[0].y, dtype=float), curve.mean[1, 3])
    e.grid.click(0, 1)
    shown = [t for t in e.lag_figure.data if t.mode == "lines+markers"]
    np.testing.assert_allclose(np.array(shown[0].y, dtype=float), curve.mean[0, 1])
    assert HeadExplorer(atlas, subject, background=False).lag_figure is None  # optional panel
    with pytest.raises(InputError, match="LagCurve"):
        HeadExplorer(atlas, subject, lag_crp=aggregate_lag_curves(values[:, 0], lags, n_boot=0), background=False)


# ------------------------------------------------------------------------------------------ AblationPlayground
def test_next_token_table_and_kl_are_exact():
    class Tok:
        def decode(self, ids):
            return f"t{ids[0]}"

    g = torch.Generator().manual_seed(0)
    before, after = torch.randn(50, generator=g), torch.randn(50, generator=g)
    table = compare_next_token(before, after, Tok(), k=5)
    p, q = before.double().softmax(-1).numpy(), after.double().softmax(-1).numpy()
    assert set(table["id"]) == set(np.argsort(-p)[:5]) | set(np.argsort(-q)[:5])
    np.testing.assert_allclose(table["p_before"], p[table["id"]])
    np.testing.assert_allclose(table["logit_diff"], (after - before).double().numpy()[table["id"]])
    assert kl_divergence(before, after) == pytest.approx(entropy(p, q), rel=1e-10)
    fig = next_token_figure(table, "t")
    np.testing.assert_allclose(fig.data[2].x, table["logit_diff"])
    with pytest.raises(InputError):
        compare_next_token(before, after[:10], Tok())


def test_parse_heads(subject):
    assert parse_heads("1.2, L0H3 1.2") == [(1, 2), (0, 3)]
    with pytest.raises(InputError, match="LAYER.HEAD"):
        parse_heads("1-2")
    with pytest.raises(InputError, match="out of range"):
        parse_heads("5.0", subject)


def _last(subject, prompt, *specs):
    with apply(subject, *specs):
        return subject.logits(prompt)[0, -1].double()


@pytest.mark.parametrize("kind", ["zero", "query-zero", "scale", "mean"])
def test_playground_numbers_equal_interventions_apply(subject, kind):
    w = AblationPlayground(subject, heads=[(0, 1), (1, 2)], intervention=kind, prompt=PROMPT, factor=3.0,
                           background=False)
    heads = [(0, 1), (1, 2)]
    if kind == "mean":
        z = capture(subject, PROMPT, heads=heads, patterns=False, z=True).z
        spec = ReplaceHead(heads, values=mean_values(z, heads))
    else:
        spec = {"zero": ZeroHead(heads), "query-zero": ZeroQuery(heads), "scale": ScaleHead(heads, factor=3.0)}[kind]
    before, after = _last(subject, PROMPT), _last(subject, PROMPT, spec)
    torch.testing.assert_close(w.logits_before.double(), before)
    torch.testing.assert_close(w.logits_after.double(), after)
    assert w.kl == pytest.approx(kl_divergence(before, after), rel=1e-5, abs=1e-9)
    assert (after - before).abs().max() > 1e-5 and w.kl > 0  # the intervention changed something
    np.testing.assert_allclose(np.array(w.figure.data[2].x, dtype=float), w.result["logit_diff"])


def test_playground_clicks_toggle_heads_and_update_live(subject, atlas):
    w = AblationPlayground(subject, prompt=PROMPT, atlas=atlas, background=False)
    assert w.kl == 0.0 and "after = before" in w.summary.value
    np.testing.assert_allclose(_z(w.grid.figure), atlas.matrix("induction"))
    w.grid.click(1, 0)
    assert w.heads.value == "1.0" and [s["x0"] for s in w.grid.figure.layout.shapes] == [-0.5]
    torch.testing.assert_close(w.logits_after.double(), _last(subject, PROMPT, ZeroHead([(1, 0)])))
    w.group.value = True  # the whole KV group of L1H0: heads 0 and 1
    torch.testing.assert_close(w.logits_after.double(), _last(subject, PROMPT, ZeroHead([(1, 0), (1, 1)])))
    diff = np.array(w.figure.data[2].x, dtype=float)
    w.prompt.value = TEXT  # a new prompt recomputes both runs
    torch.testing.assert_close(w.logits_before.double(), _last(subject, TEXT))
    assert len(diff) != len(w.result) or not np.allclose(diff, w.result["logit_diff"])
    w.grid.click(1, 0)  # clicking again removes it
    assert w.heads.value == "" and w.kl == 0.0
    w.heads.value = "9.9"  # bad input: shown in the widget, no crash
    assert "out of range" in w.jobs.status.value
    with pytest.raises(InputError):
        w.wait()


# ------------------------------------------------------------------------------------------------ SweepViewer
@pytest.fixture(scope="module")
def sweep(subject, tmp_path_factory):
    from workbench.sweeps.runner import layer_groups, run_sweep, single_heads
    from workbench.tasks.induction import induction_task

    out = tmp_path_factory.mktemp("sweep") / "full"
    task = induction_task(subject, n_prompts=2, seq_len=6, filter=False)
    run_sweep(subject, task, out, cells=single_heads(subject) + layer_groups(subject, [1]), chunk_cells=1)  # a part per cell
    return out


def test_sweep_viewer_shows_a_growing_sweep(sweep, tmp_path):
    from workbench.sweeps.runner import load_sweep

    full = load_sweep(sweep)
    live = tmp_path / "live"
    (live / "parts").mkdir(parents=True)
    meta = json.loads((sweep / "sweep.json").read_text())
    (live / "sweep.json").write_text(json.dumps({**meta, "status": "running"}))
    parts = sorted((sweep / "parts").glob("part-*.parquet"))
    for p in parts[:3]:
        shutil.copy(p, live / "parts" / p.name)

    v = SweepViewer(live, background=False)
    shown = v.matrix()
    assert np.isfinite(shown).sum() == 3 and "running: 3 of 9 cells done" in v.info.value
    for p in parts[3:]:
        shutil.copy(p, live / "parts" / p.name)
    v.refresh_button.click()
    singles = full[full["head"] >= 0]
    expected = np.full((2, 4), np.nan)
    expected[singles["layer"], singles["head"]] = singles["effect"]
    np.testing.assert_allclose(v.matrix(), expected)
    np.testing.assert_allclose(_z(v.figure), expected)
    assert "9 of 9 cells done" in v.info.value and "L1H0+L1H1+L1H2+L1H3" in v.groups.value
    v.value.value = "value"
    np.testing.assert_allclose(np.nanmean(_z(v.figure)), singles["value"].mean())
    with pytest.raises(InputError, match="no sweep folder"):
        SweepViewer(tmp_path / "missing")


def test_sweep_viewer_polls_while_running(sweep, tmp_path):
    live = tmp_path / "live"
    (live / "parts").mkdir(parents=True)
    v = SweepViewer(live, poll=0.5).wait()
    assert np.isnan(v.matrix()).all() and "no sweep.json yet: 0 cells done" in v.info.value
    shutil.copy(sweep / "sweep.json", live / "sweep.json")
    for p in sorted((sweep / "parts").glob("part-*.parquet"))[:2]:
        shutil.copy(p, live / "parts" / p.name)
    deadline = time.monotonic() + 20
    while np.isfinite(v.matrix()).sum() < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    v.close()
    assert np.isfinite(v.matrix()).sum() == 2 and isinstance(v.rows, pd.DataFrame)


def test_stored_widget_state_has_no_nan():
    """NaN (heads a partial sweep has not reached) is synced as None: JSON has no NaN and the browser would drop it."""
    import plotly.graph_objects as go

    from workbench.widgets.figure_widget import figure_widget, replace_figure

    w = figure_widget()
    replace_figure(w, go.Figure(go.Heatmap(z=np.array([[1.0, np.nan], [np.inf, 2.0]]))))
    z = w._widget_data[0]["z"]
    assert z == [[1.0, None], [None, 2.0]]
    json.dumps(w._widget_data, allow_nan=False)
    assert np.isnan(w.data[0].z[0][1])  # the figure itself keeps NaN
