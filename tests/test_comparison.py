"""Comparing atlases by normalised depth: counts, shares, depth quartiles, overlaps and profiles on tiny atlases
whose answers are known by construction, and the figures drawn from those tables."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.atlas import Atlas
from workbench.comparison import HEAD_TYPES, HeadType, compare_atlases, normalised_depth
from workbench.errors import InputError
from workbench.viz.compare import depth_comparison_figure, depth_profile_figure

DESCRIBE = {"definition": "test", "source": "test", "range": "[0, 1]"}


def _atlas(model: str, n_layers: int, n_heads: int, columns: dict, layer_types=None) -> Atlas:
    types = layer_types or ["full"] * n_layers
    a = Atlas.for_model(n_layers, n_heads, 1, types, {"model": model})
    for name, values in columns.items():
        a = a.with_scores(name, values, **DESCRIBE)
    return a


@pytest.fixture
def pair():
    # model A: 5 layers x 2 heads (depths 0, .25, .5, .75, 1); induction heads L2H0 (0.9), L4H1 (0.5); L1H1 at exactly
    # 0.3 (not above); retrieval heads L2H0 (0.8), L3H1 (0.2); CMR-like (< 0.5) L2H0 (0.05), L4H1 (0.4), L0H0 NaN
    ind_a = np.zeros((5, 2)); ind_a[2, 0], ind_a[4, 1], ind_a[1, 1] = 0.9, 0.5, 0.3
    ret_a = np.zeros((5, 2)); ret_a[2, 0], ret_a[3, 1] = 0.8, 0.2
    cmr_a = np.ones((5, 2)); cmr_a[2, 0], cmr_a[4, 1], cmr_a[0, 0] = 0.05, 0.4, np.nan
    a = _atlas("A", 5, 2, {"induction": ind_a, "retrieval": ret_a, "cmr_distance": cmr_a})
    # model B: 3 layers x 4 heads (depths 0, .5, 1); induction heads L1H0..L1H2 and L2H3; no retrieval column
    ind_b = np.zeros((3, 4)); ind_b[1, :3], ind_b[2, 3] = 0.6, 0.7
    cmr_b = np.ones((3, 4)); cmr_b[1, 0] = 0.1
    b = _atlas("B", 3, 4, {"induction": ind_b, "cmr_distance": cmr_b}, ["sliding", "sliding", "full"])
    return a, b


def test_normalised_depth():
    np.testing.assert_allclose(normalised_depth([0, 2, 4], 5), [0.0, 0.5, 1.0])
    np.testing.assert_allclose(normalised_depth([0], 1), [0.0])
    with pytest.raises(InputError, match="n_layers"):
        normalised_depth([0], 0)


def test_counts_shares_and_depth_quartiles(pair):
    import workbench as wb

    c = wb.compare_atlases(pair)
    assert c.models == ["A", "B"]
    s = c.summary.set_index(["model", "head_type"])
    ind_a = s.loc[("A", "induction")]
    assert (ind_a["count"], ind_a["n_heads"], ind_a["share"]) == (2, 10, 0.2)  # 0.3 is not > 0.3
    assert (ind_a["depth_min"], ind_a["depth_q1"], ind_a["depth_median"], ind_a["depth_q3"], ind_a["depth_max"]) == \
        (0.5, 0.625, 0.75, 0.875, 1.0)
    ind_b = s.loc[("B", "induction")]
    assert (ind_b["count"], ind_b["share"]) == (4, 4 / 12)
    assert (ind_b["depth_q1"], ind_b["depth_median"], ind_b["depth_max"]) == (0.5, 0.5, 1.0)
    ret_a = s.loc[("A", "retrieval")]
    assert ret_a["count"] == 2 and ret_a["depth_median"] == pytest.approx(0.625)
    cmr_a = s.loc[("A", "cmr_like")]
    assert cmr_a["count"] == 2 and cmr_a["rule"] == "cmr_distance < 0.5"  # NaN distance is not CMR-like
    assert not s.loc[("B", "retrieval"), "measured"] and np.isnan(s.loc[("B", "retrieval"), "count"])
    assert not s.loc[("A", "sink"), "measured"]  # no sink_rate column in either atlas
    assert c.table("count").loc["induction"].tolist() == [2, 4]
    assert list(c.table("share").index) == [t.name for t in HEAD_TYPES]


def test_typed_heads_overlaps_and_profiles(pair):
    c = compare_atlases({"first": pair[0], "second": pair[1]})
    assert c.models == ["first", "second"]
    h = c.heads[(c.heads["model"] == "first") & (c.heads["head_type"] == "induction")]
    assert list(zip(h["layer"], h["head"], h["depth"], h["value"])) == [(2, 0, 0.5, 0.9), (4, 1, 1.0, 0.5)]
    o = c.overlap("retrieval", "induction")
    assert o.loc["first"].tolist() == [2, 1, 0.5]  # L2H0 is both, L3H1 only retrieval
    assert c.overlap("induction", "cmr_like").loc["first", "share_of_a"] == 1.0
    assert c.overlap("induction", "cmr_like").loc["second"].tolist() == [4, 1, 0.25]
    with pytest.raises(InputError, match="measured types"):
        c.overlap("retrieval", "sink")
    p = c.profiles[(c.profiles["model"] == "second") & (c.profiles["column"] == "induction")]
    np.testing.assert_allclose(p["mean"], [0.0, 0.45, 0.175])
    np.testing.assert_allclose(p["max"], [0.0, 0.6, 0.7])
    np.testing.assert_allclose(p["depth"], [0.0, 0.5, 1.0])
    assert p["layer_type"].tolist() == ["sliding", "sliding", "full"]


def test_markdown_and_custom_head_types(pair):
    c = compare_atlases(pair, head_types=[HeadType("strong induction", "induction", 0.65), HEAD_TYPES[3]])
    md = c.markdown()
    assert "| strong induction | induction > 0.65 | 1/10 (10.0%), depth 0.50 [0.50, 0.50] | 1/12 (8.3%), depth 1.00" in md
    assert "| retrieval | retrieval > 0.1 | 2/10 (20.0%)" in md and md.rstrip().endswith("not measured |")


def test_bad_input(pair):
    with pytest.raises(InputError, match="share the model name"):
        compare_atlases([pair[0], pair[0]])
    with pytest.raises(InputError, match="not an Atlas"):
        compare_atlases({"x": pair[0].table})
    with pytest.raises(InputError, match="HeadType"):
        compare_atlases(pair, head_types=[])
    with pytest.raises(InputError, match="statistic"):
        compare_atlases(pair).table("bogus")


def test_figures_show_the_comparison_tables(pair):
    c = compare_atlases(pair)
    fig = c.figure()
    bars = [t for t in fig.data if t.type == "bar"]
    boxes = [t for t in fig.data if t.type == "box"]
    assert [t.name for t in bars] == ["A", "B"] and [t.name for t in boxes] == ["A", "B"]
    types = [t.name for t in HEAD_TYPES]
    assert list(bars[0].x) == types
    assert bars[0].y[types.index("induction")] == pytest.approx(0.2)
    assert np.isnan(bars[1].y[types.index("retrieval")]) and bars[1].text[types.index("retrieval")] == "not measured"
    assert bars[1].text[types.index("induction")] == "4/12"
    a_ind = [d for t, d in zip(boxes[0].x, boxes[0].y) if t == "induction"]
    assert sorted(a_ind) == [0.5, 1.0]
    assert "L4H1" in [s for s in boxes[0].text if "induction" in s][-1]
    prof = c.profile_figure(["induction", "cmr_distance"], stat="max")
    assert len(prof.data) == 4 and [t.name for t in prof.data] == ["A", "A", "B", "B"]
    np.testing.assert_allclose(prof.data[2].y, [0.0, 0.6, 0.7])
    assert list(prof.data[2].marker.size) == [6, 6, 11]  # B's global layer drawn larger
    with pytest.raises(InputError, match="no profile"):
        depth_profile_figure(c.profiles, ["bogus"], c.models)
    with pytest.raises(InputError, match="stat"):
        depth_profile_figure(c.profiles, ["induction"], c.models, stat="median")
    with pytest.raises(InputError, match="at least one"):
        depth_comparison_figure(c.summary, c.heads, [], types)
