"""Views: heatmap orientation and hover, tables, pattern figures, and the self-contained HTML report."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from workbench.errors import InputError
from workbench.viz import format_value, head_heatmap, pattern_figure, top_table, write_report


def test_head_heatmap_puts_layer_0_at_the_top_and_heads_across():
    m = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.93]])  # 2 layers x 3 heads
    fig = head_heatmap(m, "scores", "Viridis", colorbar_title="induction")
    trace = fig.data[0]
    np.testing.assert_array_equal(np.asarray(trace.z), m)
    assert list(trace.y) == [0, 1] and list(trace.x) == [0, 1, 2]
    assert fig.layout.yaxis.autorange == "reversed"  # first row (layer 0) drawn at the top
    assert fig.layout.yaxis.title.text == "layer" and fig.layout.xaxis.title.text == "head"
    assert trace.text[1][2] == "L1H2: 0.93"
    assert trace.colorbar.title.text == "induction" and fig.layout.title.text == "scores"


def test_head_heatmap_hover_lines_and_shape_checks():
    m = np.array([[np.nan, 1.0]])
    fig = head_heatmap(m, "t", "RdBu", zmid=0.0, hover=[["a", "b"]])
    assert list(fig.data[0].text[0]) == ["L0H0: n/a<br>a", "L0H1: 1<br>b"]
    assert fig.data[0].zmid == 0.0
    with pytest.raises(InputError, match="one string per head"):
        head_heatmap(m, "t", hover=[["a"]])
    with pytest.raises(InputError, match=r"\(n_layers, n_heads\)"):
        head_heatmap(np.zeros(3), "t")


def test_format_value():
    assert [format_value(v) for v in (0.934, float("nan"), None, 3, np.float32(12345.0))] == \
        ["0.934", "n/a", "n/a", "3", "1.23e+04"]


def test_top_table_shows_every_column_in_order():
    df = pd.DataFrame({"layer": [5, 2], "head": [1, 0], "score": [0.93456, np.nan]})
    fig = top_table(df, "top heads")
    table = fig.data[0]
    assert isinstance(table, go.Table) and fig.layout.title.text == "top heads"
    assert list(table.header.values) == ["layer", "head", "score"]
    assert [list(c) for c in table.cells.values] == [["5", "2"], ["1", "0"], ["0.935", "n/a"]]


def test_pattern_figure_labels_tokens_and_orients_queries_down():
    pattern = np.tril(np.ones((4, 4))) / np.arange(1, 5)[:, None]
    tokens = ["<bos>", "The", " cat", "\n"]
    fig = pattern_figure(pattern, tokens, "L1H2 on a prompt")
    trace = fig.data[0]
    assert list(trace.x) == ["0 '&lt;bos&gt;'", "1 'The'", "2 ' cat'", "3 '\\n'"]
    assert list(trace.y) == list(trace.x)
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.title.text == "L1H2 on a prompt"
    assert list(fig.layout.xaxis.ticktext) == ["&lt;bos&gt;", "The", " cat", "\\n"]
    np.testing.assert_allclose(np.asarray(trace.z), pattern, rtol=1e-6)


def test_pattern_figure_with_selected_rows_and_long_contexts():
    n = 300
    tokens = [f"tok{i}" for i in range(n)]
    fig = pattern_figure(np.full((2, n), 1 / n), tokens, "two rows", rows=[10, 299])
    assert list(fig.data[0].y) == ["10 'tok10'", "299 'tok299'"]
    ticks = list(fig.layout.xaxis.ticktext)
    assert 10 <= len(ticks) <= 13 and ticks[:2] == ["0", "25"]  # positions, not 300 token labels
    with pytest.raises(InputError, match="rows="):
        pattern_figure(np.zeros((2, n)), tokens, "no rows")
    with pytest.raises(InputError, match="3 tokens"):
        pattern_figure(np.zeros((4, 4)), tokens[:3], "bad")
    with pytest.raises(InputError, match="batch item"):
        pattern_figure(np.zeros((1, 4, 4)), tokens[:4], "bad")


def figures():
    return [head_heatmap(np.eye(3), "first heatmap title"), top_table(pd.DataFrame({"a": [1]}), "second table title"),
            pattern_figure(np.eye(2), ["x", "y"], "third pattern title")]


def test_report_is_self_contained_with_plotly_inline_once(tmp_path):
    meta = {"model": "toy-model", "weights_note": "dequantised from a Q4_1 GGUF to float32", "seed": 3,
            "stimuli": {"repeat": {"seq_len": 50}}, "versions": {"plotly": "7"}, "wall_time_s": 1.25,
            "columns": {"x": {"definition": "hidden from the table"}}, "device": "cpu"}
    path = write_report(tmp_path / "r.html", "Report <title>", [("Intro", "Plain text & <b>not html</b>."),
                                                              ("Figures", figures())], meta)
    page = path.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # written atomically, no temp file left
    assert not re.search(r"<script[^>]*\bsrc\s*=", page)  # nothing loaded from elsewhere
    bundle = get_plotlyjs()
    assert page.count(bundle) == 1 and page.count(bundle[:120]) == 1
    outside = page.replace(bundle, "")
    assert "cdn.plot.ly" not in outside and "https://cdn" not in outside
    for title in ("first heatmap title", "second table title", "third pattern title"):
        assert title in outside, title
    assert "<h1>Report &lt;title&gt;</h1>" in page
    assert "Plain text &amp; &lt;b&gt;not html&lt;/b&gt;." in page
    for cell in ("toy-model", "dequantised from a Q4_1 GGUF to float32", "seq_len", "1.25", "<th>device</th>"):
        assert cell in outside, cell
    assert "hidden from the table" not in outside
    assert outside.index("toy-model") < outside.index("first heatmap title")  # metadata table on top


def test_report_marks_missing_provenance_and_rejects_bad_sections(tmp_path):
    page = write_report(tmp_path / "r.html", "t", [("Only text", "hello")], {"model": "m"}).read_text()
    assert page.count("not recorded") == 5  # weights, stimuli, seeds, versions, wall time
    with pytest.raises(InputError, match="plotly figures or text"):
        write_report(tmp_path / "bad.html", "t", [("Bad", [object()])], {})
    with pytest.raises(InputError, match="pair"):
        write_report(tmp_path / "bad.html", "t", ["just a string"], {})
    assert not (tmp_path / "bad.html").exists()
