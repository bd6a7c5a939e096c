"""The scan: an Atlas with every default column; streamed statistics give the exact path's numbers."""

import numpy as np
import pytest

import workbench as wb
from workbench.detectors import REGISTRY, ScanContext
from tests.conftest import tiny_gemma3, tiny_llama

SMALL = {"batch": 3, "seq_len": 12, "sink_batch": 4, "sink_tokens": 16, "copy_batch": 2, "copy_queries": 5}


def test_scan_builds_a_complete_reproducible_atlas(tmp_path):
    subject = tiny_llama(seed=1)
    atlas = wb.scan(subject, seed=3, settings=SMALL)
    cols = ["previous_token", "duplicate_token", "induction", "copying", "sink_rate", "sink_mass"]
    assert atlas.score_columns == cols
    assert len(atlas.table) == subject.n_layers * subject.n_heads
    assert list(atlas.table["kv_group"][:4]) == [0, 0, 1, 1]
    for c in cols:
        m = atlas.matrix(c)
        assert np.isfinite(m).all()
        lo = -1 if c == "copying" else 0
        assert (m >= lo - 1e-6).all() and (m <= 1 + 1e-6).all()
        assert atlas.meta["columns"][c]["source"]
    assert atlas.meta["seed"] == 3 and atlas.meta["stimuli"]["repeated_random_tokens"]["seq_len"] == 12
    again = wb.scan(subject, seed=3, settings=SMALL)
    assert np.allclose(again.matrix("induction"), atlas.matrix("induction"))
    assert not np.allclose(wb.scan(subject, seed=4, settings=SMALL).matrix("induction"), atlas.matrix("induction"))
    atlas.save(tmp_path)
    assert wb.Atlas.load(tmp_path).meta["weights_note"] == atlas.meta["weights_note"]


@pytest.mark.parametrize("make", [tiny_llama, lambda seed: tiny_gemma3(seed=seed, window=8)])
def test_streamed_statistics_match_exact_patterns(make):
    subject = make(seed=2)
    settings = {**SMALL, "n_repeats": 3}
    out = {}
    for mode in ("exact", "streamed"):
        ctx = ScanContext(seed=0, settings={**settings, "capture": mode})
        out[mode] = {c: v for name in ("previous_token", "duplicate_token", "induction", "copying")
                     for c, v in REGISTRY[name].compute(subject, ctx).items()}
        assert ctx.stimuli["repeated_random_tokens"]["capture"] == mode
    for column in out["exact"]:  # per sequence (the bootstrap's items) and their weights, not only the means
        exact, streamed = out["exact"][column], out["streamed"][column]
        assert exact.values.shape == (settings["batch"] if column != "copying" else 2, subject.n_layers, subject.n_heads)
        assert np.allclose(exact.values, streamed.values, atol=1e-5), column
        assert np.array_equal(exact.weights, streamed.weights), column
        assert np.allclose(exact.mean(), streamed.mean(), atol=1e-5), column
