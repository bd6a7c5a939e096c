"""The Atlas: layout, validation, score columns, ranking, persistence, merging and its views."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workbench.atlas import Atlas
from workbench.errors import InputError

LAYER_TYPES = ["sliding", "sliding", "full"]
DESCRIBE = {"definition": "a test score", "source": "this test", "range": "[0, 30]"}


def grid() -> np.ndarray:
    """A non-symmetric (3 layers, 4 heads) array whose value names its cell: 10 * layer + head."""
    return 10.0 * np.arange(3)[:, None] + np.arange(4)[None, :]


@pytest.fixture
def atlas() -> Atlas:
    base = Atlas.for_model(3, 4, 2, LAYER_TYPES, {"model": "toy", "weights_note": "random float32", "seed": 7})
    return base.with_scores("cell", grid(), **DESCRIBE)


def test_for_model_lays_out_every_head_with_kv_group_and_layer_type():
    a = Atlas.for_model(3, 4, 2, LAYER_TYPES, {"model": "toy"})
    assert list(a.table.columns) == ["layer", "head", "kv_group", "layer_type"]
    assert a.score_columns == []
    assert (a.n_layers, a.n_heads) == (3, 4)
    assert list(zip(a.table.layer, a.table["head"])) == [(l, h) for l in range(3) for h in range(4)]
    assert a.table.kv_group.tolist() == [0, 0, 1, 1] * 3
    assert a.table.layer_type.tolist() == ["sliding"] * 8 + ["full"] * 4
    assert {k: a.meta[k] for k in ("n_layers", "n_heads", "n_kv_heads")} == {"n_layers": 3, "n_heads": 4, "n_kv_heads": 2}


@pytest.mark.parametrize("args, fragment", [
    ((3, 4, 3, LAYER_TYPES), "divide"),
    ((3, 4, 2, ["full"]), "one per layer"),
    ((0, 4, 2, []), "positive"),
])
def test_for_model_rejects_impossible_layouts(args, fragment):
    with pytest.raises(InputError, match=fragment):
        Atlas.for_model(*args, meta={})


def test_for_model_rejects_metadata_that_contradicts_the_layout():
    with pytest.raises(InputError, match="n_heads"):
        Atlas.for_model(3, 4, 2, LAYER_TYPES, {"n_heads": 9})


def test_init_sorts_rows_and_validates_columns(atlas):
    shuffled = atlas.table.sample(frac=1.0, random_state=0)
    again = Atlas(shuffled, atlas.meta)
    pd.testing.assert_frame_equal(again.table, atlas.table)
    with pytest.raises(InputError, match="kv_group"):
        Atlas(atlas.table.drop(columns="kv_group"), atlas.meta)
    with pytest.raises(InputError, match="L0H1 appears twice"):
        Atlas(pd.concat([atlas.table, atlas.table.iloc[[1]]]), atlas.meta)
    with pytest.raises(InputError, match="must be numeric"):
        Atlas(atlas.table.assign(bad="x"), atlas.meta)
    with pytest.raises(InputError, match="out of range"):
        Atlas(atlas.table.assign(head=atlas.table["head"] + 1), atlas.meta)


def test_matrix_has_layers_as_rows_and_heads_as_columns(atlas):
    m = atlas.matrix("cell")
    assert m.shape == (3, 4)
    np.testing.assert_array_equal(m, grid())
    row = atlas.table[(atlas.table.layer == 2) & (atlas.table["head"] == 1)]
    assert row["cell"].item() == 21.0 == m[2, 1]


def test_matrix_is_nan_where_a_head_is_missing(atlas):
    partial = Atlas(atlas.table[~((atlas.table.layer == 1) & (atlas.table["head"] == 3))], atlas.meta)
    m = partial.matrix("cell")
    assert np.isnan(m[1, 3]) and np.isnan(m).sum() == 1
    assert m[2, 3] == 23.0


def test_with_scores_returns_a_new_atlas_and_records_the_description(atlas):
    base = Atlas.for_model(3, 4, 2, LAYER_TYPES, {"model": "toy"})
    scored = base.with_scores("cell", grid(), **DESCRIBE)
    assert base.score_columns == [] and "columns" not in base.meta
    assert scored.meta["columns"]["cell"] == DESCRIBE
    replaced = scored.with_scores("cell", -grid(), definition="negated", source="s", range="[-30, 0]")
    assert replaced.score_columns == ["cell"]
    assert replaced.matrix("cell")[2, 1] == -21.0 and scored.matrix("cell")[2, 1] == 21.0
    assert replaced.meta["columns"]["cell"]["definition"] == "negated"


def test_with_scores_shape_errors_say_what_shape_is_needed(atlas):
    with pytest.raises(InputError, match=r"shape \(4, 3\).*values\.T.*\(3, 4\)"):
        atlas.with_scores("bad", grid().T, **DESCRIBE)
    with pytest.raises(InputError, match=r"shape \(12,\).*needs shape \(3, 4\)"):
        atlas.with_scores("bad", grid().ravel(), **DESCRIBE)
    with pytest.raises(InputError, match="must be numbers"):
        atlas.with_scores("bad", [["a"] * 4] * 3, **DESCRIBE)


def test_with_scores_requires_a_name_and_a_description(atlas):
    with pytest.raises(InputError, match="name"):
        atlas.with_scores("layer", grid(), **DESCRIBE)
    with pytest.raises(InputError, match="definition"):
        atlas.with_scores("x", grid(), definition="", source="s", range="[0, 1]")


def test_with_scores_accepts_a_series_indexed_by_layer_and_head(atlas):
    values = pd.Series([0.5, 0.25], index=pd.MultiIndex.from_tuples([(2, 1), (0, 3)]))
    m = atlas.with_scores("sparse", values, **DESCRIBE).matrix("sparse")
    assert m[2, 1] == 0.5 and m[0, 3] == 0.25 and np.isnan(m).sum() == 10
    with pytest.raises(InputError, match="heads this Atlas lacks"):
        atlas.with_scores("bad", pd.Series([1.0], index=pd.MultiIndex.from_tuples([(3, 0)])), **DESCRIBE)
    with pytest.raises(InputError, match="MultiIndex"):
        atlas.with_scores("bad", pd.Series([1.0, 2.0]), **DESCRIBE)


def test_top_orders_by_score_excludes_nan_and_breaks_ties_by_head():
    a = Atlas.for_model(2, 3, 3, ["full", "full"], {})
    values = np.array([[0.5, np.nan, 0.9], [0.5, 0.1, np.nan]])
    a = a.with_scores("s", values, **DESCRIBE).with_scores("other", np.zeros((2, 3)), **DESCRIBE)
    top = a.top("s", k=10)
    assert list(zip(top.layer, top["head"])) == [(0, 2), (0, 0), (1, 0), (1, 1)]
    assert list(top.columns) == ["layer", "head", "kv_group", "layer_type", "s", "other"]
    assert top.s.tolist() == [0.9, 0.5, 0.5, 0.1]
    low = a.top("s", k=2, ascending=True)
    assert list(zip(low.layer, low["head"])) == [(1, 1), (0, 0)]
    with pytest.raises(InputError, match="positive integer"):
        a.top("s", k=0)
    with pytest.raises(InputError, match="choose from s, other"):
        a.top("missing")


def test_heads_selects_by_threshold_strongest_first(atlas):
    assert atlas.heads("cell", 21.0) == [(2, 3), (2, 2), (2, 1)]
    assert atlas.heads("cell", 2.0, above=False) == [(0, 0), (0, 1), (0, 2)]
    with_nan = atlas.with_scores("cell", np.where(grid() == 23.0, np.nan, grid()), **DESCRIBE)
    assert with_nan.heads("cell", 21.0) == [(2, 2), (2, 1)]
    assert all(isinstance(i, int) for pair in atlas.heads("cell", 0.0) for i in pair)


def test_save_and_load_round_trip_table_meta_and_dtypes(atlas, tmp_path):
    rich = atlas.with_meta(stimuli={"repeat": {"seq_len": 50, "batch": np.int64(10)}}, seeds=(0, 1),
                           versions={"torch": "2.5"}, wall_time_s=np.float32(1.5))
    rich = rich.with_scores("gappy", np.where(grid() > 12, grid() / 30, np.nan), **DESCRIBE)
    out = rich.save(tmp_path / "run")
    assert out == tmp_path / "run"
    assert sorted(p.name for p in out.iterdir()) == ["atlas.json", "atlas.parquet"]  # no temp files left
    for source in (out, out / "atlas.parquet"):
        loaded = Atlas.load(source)
        pd.testing.assert_frame_equal(loaded.table, rich.table, check_dtype=True)
        assert loaded.meta == rich.meta
    assert json.loads((out / "atlas.json").read_text())["seeds"] == [0, 1]
    assert rich.meta["stimuli"]["repeat"]["batch"] == 10 and rich.meta["wall_time_s"] == 1.5


def test_load_names_the_missing_file(atlas, tmp_path):
    with pytest.raises(InputError, match="atlas.parquet is missing"):
        Atlas.load(tmp_path / "nowhere")
    atlas.save(tmp_path / "run")
    (tmp_path / "run" / "atlas.json").unlink()
    with pytest.raises(InputError, match="atlas.json is missing"):
        Atlas.load(tmp_path / "run")


def test_save_wants_a_folder(atlas, tmp_path):
    with pytest.raises(InputError, match="folder"):
        atlas.save(tmp_path / "atlas.parquet")


def test_metadata_must_be_json_serialisable():
    with pytest.raises(InputError, match="JSON-serialisable.*object"):
        Atlas.for_model(1, 1, 1, ["full"], {"thing": object()})


def test_with_meta_returns_a_new_atlas_and_guards_column_descriptions(atlas):
    updated = atlas.with_meta(wall_time_s=3.0)
    assert updated.meta["wall_time_s"] == 3.0 and "wall_time_s" not in atlas.meta
    with pytest.raises(InputError, match="with_scores"):
        atlas.with_meta(columns={})


def test_merge_adds_the_other_atlas_columns_and_their_descriptions(atlas):
    other = Atlas.for_model(3, 4, 2, LAYER_TYPES, {"model": "toy", "seed": 99})
    other = other.with_scores("double", 2 * grid(), definition="twice", source="s", range="[0, 60]")
    other = other.with_scores("cell", grid() + 0.5, **DESCRIBE)
    merged = atlas.merge(other)
    assert merged.score_columns == ["cell", "double"]
    assert merged.matrix("double")[2, 1] == 42.0
    assert merged.matrix("cell")[2, 1] == 21.5  # the other atlas's column replaces a same-named one
    assert merged.meta["columns"]["double"]["definition"] == "twice"
    assert merged.meta["seed"] == 7 and merged.meta["merged_from"][0]["seed"] == 99
    assert atlas.score_columns == ["cell"]


def test_merge_refuses_different_heads_or_models(atlas):
    with pytest.raises(InputError, match="different heads"):
        atlas.merge(Atlas.for_model(3, 4, 1, LAYER_TYPES, {"model": "toy"}))
    with pytest.raises(InputError, match="different heads"):
        atlas.merge(Atlas.for_model(3, 4, 2, ["full"] * 3, {"model": "toy"}))
    with pytest.raises(InputError, match="same model"):
        atlas.merge(Atlas.for_model(3, 4, 2, LAYER_TYPES, {"model": "another"}))


def test_plot_gives_a_heatmap_and_a_top_table_per_score(atlas):
    a = atlas.with_scores("neg", -grid(), definition="negative", source="s", range="[-30, 0]")
    a = a.with_scores("mixed", grid() - 10, definition="both signs", source="s", range="[-10, 20]")
    figures = a.plot()
    assert sorted(figures) == ["cell", "mixed", "neg", "top_cell", "top_mixed", "top_neg"]
    heat = figures["cell"].data[0]
    np.testing.assert_array_equal(np.asarray(heat.z), grid())
    assert heat.text[2][1].startswith("L2H1: 21<br>KV group 0, full attention")
    assert "neg: -21" in heat.text[2][1] and "mixed: 11" in heat.text[2][1]
    assert figures["mixed"].data[0].zmid == 0.0 and figures["cell"].data[0].zmid is None
    table = figures["top_cell"].data[0]
    assert table.header.values[-1] == "cell" and list(table.cells.values[-1][:2]) == ["23", "22"]
    assert sorted(a.plot(columns=["neg"])) == ["neg", "top_neg"]
    with pytest.raises(InputError, match="no score column"):
        a.plot(columns=["nope"])


def test_to_html_writes_a_report_with_every_score_and_extra_figure(atlas, tmp_path):
    from workbench.viz.heads import pattern_figure

    extra = {"pattern": pattern_figure(np.eye(3), ["a", "b", "c"], "an extra pattern figure")}
    path = atlas.to_html(tmp_path / "atlas.html", extra_figures=extra, notes="Read me first.")
    page = path.read_text()
    for text in ("Head atlas: toy", "cell (toy)", "top 10 heads by cell", "an extra pattern figure",
                 "a test score. Source: this test. Range: [0, 30].", "Read me first.", "random float32"):
        assert text in page, text


def test_repr_html_is_compact(atlas):
    view = atlas._repr_html_()
    assert "toy" in view and "3 layers x 4 query heads (2 KV heads)" in view
    assert "L2H3 23, L2H2 22, L2H1 21" in view
    assert "<script" not in view
